"""Ports and service URLs in the settings: `--port-base`, per-service flags and variables."""

from __future__ import annotations

import pytest

from eventledger.config import DEFAULT_PORTS, ConfigError, load_settings


def test_the_defaults_are_api_md_s_ports_console_included() -> None:
    assert load_settings({}, env={}).ports == DEFAULT_PORTS
    assert DEFAULT_PORTS["console"] == 8005


def test_a_port_base_puts_the_services_at_n_plus_one_to_five_in_api_md_s_order() -> None:
    ports = load_settings({"port_base": 9000}, env={}).ports
    assert ports == {
        "transaction": 9001,
        "stream": 9002,
        "accounting": 9003,
        "statistics": 9004,
        "console": 9005,
    }


def test_flags_win_over_variables_and_a_service_s_own_port_over_the_base() -> None:
    env = {"EVENTLEDGER_PORT_BASE": "7000", "EVENTLEDGER_STREAM_PORT": "7777"}
    assert load_settings({}, env=env).ports["stream"] == 7777
    assert load_settings({}, env=env).ports["console"] == 7005
    settings = load_settings({"port_base": 9000, "console_port": 9999}, env=env)
    assert settings.ports["stream"] == 9002  # the flag's base over the variable's port
    assert settings.ports["console"] == 9999


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        ({"port_base": "65533"}, {}, "--port-base"),
        ({"port_base": "x"}, {}, "--port-base"),
        ({}, {"EVENTLEDGER_PORT_BASE": "-1"}, "EVENTLEDGER_PORT_BASE"),
        ({"console_port": "70000"}, {}, "--console-port"),
        ({}, {"EVENTLEDGER_CONSOLE_PORT": "8o05"}, "EVENTLEDGER_CONSOLE_PORT"),
        ({"accounting_url": "ftp://x"}, {}, "--accounting-url"),
    ],
)
def test_a_bad_port_or_url_is_refused_naming_its_flag_or_variable(
    flags: dict[str, object], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(flags, env=env)


def test_the_console_finds_the_services_at_the_urls_given() -> None:
    env = {"EVENTLEDGER_STATISTICS_URL": "http://127.0.0.1:1234/"}
    settings = load_settings({"transaction_url": "http://127.0.0.1:4321"}, env=env)
    assert settings.url("transaction") == "http://127.0.0.1:4321"
    assert settings.url("statistics") == "http://127.0.0.1:1234"
    assert settings.url("accounting") == "http://127.0.0.1:8003"


def test_up_keeps_the_console_on_loopback_when_the_services_listen_wider() -> None:
    from eventledger.cli.ports import host_of

    wide = load_settings({"host": "0.0.0.0"}, env={})
    assert host_of(wide, "transaction") == "0.0.0.0"
    assert host_of(wide, "console") == "127.0.0.1"
    assert host_of(load_settings({"host": "::1"}, env={}), "console") == "::1"
    open_wide = load_settings({"host": "0.0.0.0", "insecure_no_auth": True}, env={})
    assert host_of(open_wide, "console") == "0.0.0.0"
