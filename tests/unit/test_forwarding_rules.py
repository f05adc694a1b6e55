"""When a stream instance hands `POST /appends` to the writer (services/stream/forwarding.py),
and the `--advertise-url` setting that makes it take part."""

from __future__ import annotations

from typing import Any

import pytest

from eventledger.config import ConfigError, load_settings
from eventledger.services.stream.forwarding import every_event_has_an_id, writer_of

PG = "postgresql://ledger@db.internal:5432/ledger"


def event(**extra: Any) -> dict[str, Any]:
    return {"type": "MoneyDeposited", "data": {}, **extra}


def test_only_appends_whose_every_event_has_an_id_are_handed_over() -> None:
    one = {"stream": "account-a", "expected_version": 1, "events": [event(id="x")]}
    batch = {"appends": [one, {"stream": "account-b", "events": [event(id="y")]}]}
    assert every_event_has_an_id([{"appends": [one]}, batch])
    # An event without an id would get a new one if appended again: never handed over.
    no_id = {"stream": "s", "events": [event()]}
    assert not every_event_has_an_id([{"appends": [one]}, {"appends": [no_id]}])
    assert not every_event_has_an_id([{"appends": [one, no_id]}])
    assert not every_event_has_an_id([{"appends": [{"stream": "s", "events": [event(id=7)]}]}])


@pytest.mark.parametrize(
    "items",
    [
        [None],
        ["text"],
        [{"stream": "s", "events": [{"id": "x"}]}],  # an append, not an item of them
        [{"appends": [{"stream": "s"}]}],
        [{"appends": [{"stream": "s", "events": []}]}],
        [{"appends": [{"stream": "s", "events": "x"}]}],
        [{"appends": [{"stream": "s", "events": [None]}]}],
        [{"appends": []}],
        [{"appends": {"stream": "s"}}],
        [{"appends": [None]}],
    ],
)
def test_anything_not_plainly_an_append_with_ids_is_appended_here(items: list[object]) -> None:
    # Here, the instance's own validation answers it (with the problem it names).
    assert not every_event_has_an_id(items)


def test_an_advertised_url_is_taken_for_a_postgresql_store() -> None:
    settings = load_settings({"advertise_url": "http://stream-1:8002/", "store": PG}, env={})
    assert settings.advertise_url == "http://stream-1:8002"
    env = {"EVENTLEDGER_ADVERTISE_URL": "https://stream-2:8443", "EVENTLEDGER_STORE": PG}
    assert load_settings({}, env=env).advertise_url == "https://stream-2:8443"
    assert load_settings({}, env={}).advertise_url is None


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        ({"advertise_url": "stream-1:8002", "store": PG}, "http:// URL"),
        ({"advertise_url": "ftp://stream-1", "store": PG}, "http:// URL"),
        ({"advertise_url": "http://stream-1:8002/appends", "store": PG}, "http:// URL"),
        ({"advertise_url": "http://:8002", "store": PG}, "http:// URL"),
        ({"advertise_url": "http://stream-1:8002"}, "PostgreSQL"),
        ({"advertise_url": "http://s:1", "store": "sqlite:///tmp/x.db"}, "PostgreSQL"),
    ],
)
def test_an_advertised_url_that_cannot_work_is_refused_at_start(
    flags: dict[str, object], names: str
) -> None:
    with pytest.raises(ConfigError, match=names):
        load_settings(flags, env={})


@pytest.mark.parametrize(
    ("header", "url"),
    [
        ("http://stream-1:8002", "http://stream-1:8002"),
        ("https://10.0.0.7:8443/", "https://10.0.0.7:8443"),
        ("http://stream-1:8002/appends", None),
        ("http://user@stream-1:8002", None),
        ("ftp://stream-1", None),
        ("http://stream-1:99999", None),
        ("http://", None),
        ("not a url", None),
        ("http://a" + "b" * 3000, None),
    ],
)
def test_a_writer_header_names_a_url_or_nothing(header: str, url: str | None) -> None:
    assert writer_of(header) == url
