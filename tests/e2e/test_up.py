"""`eventledger up` never lies: ports checked before anything starts, `/health` trusted only from
its own children, children gone when `up` is killed (kill -9 included), the console served
behind a sign-in with the CLI's token."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import HOST, cli_env, free_port, wait_for

pytestmark = pytest.mark.slow

ORDER = ("transaction", "stream", "accounting", "statistics", "console")  # N+1..N+5


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def processes_using(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker` (a unique data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def answers(port: int) -> bool:
    try:
        httpx.get(f"http://{HOST}:{port}/health", timeout=1.0)
    except httpx.TransportError:
        return False
    return True


def free_base() -> int:
    """A base N whose ports N+1..N+5 are free now on 127.0.0.1."""
    for _ in range(50):
        base = free_port() - 1
        if base + 5 > 65535:
            continue
        probes = []
        try:
            for offset in range(1, 6):
                probe = socket.socket()
                probes.append(probe)
                probe.bind((HOST, base + offset))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise AssertionError("no five free ports in a row")


def start_up(data_dir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "eventledger", "up", "--data-dir", str(data_dir), *args],
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data_dir.parent,
        )


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[Path]:
    """A data dir under tmp_path; afterwards no process that uses it is left running."""
    data = tmp_path / "data"
    yield data
    for pid in processes_using(str(data)):
        os.kill(pid, signal.SIGKILL)


def test_up_refuses_a_taken_port_naming_it_the_service_and_the_flag_and_starts_nothing(
    cleanup: Path, tmp_path: Path
) -> None:
    ports = {name: free_port() for name in ORDER}
    flags = [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    log = tmp_path / "up.log"
    with socket.socket() as squatter:  # a stale server still holds the accounting port
        squatter.bind((HOST, ports["accounting"]))
        squatter.listen()
        process = start_up(cleanup, log, *flags)
        code = process.wait(timeout=30.0)
        output = log.read_text()
    assert code != 0, output
    assert f"port {ports['accounting']}" in output, output
    assert "accounting service" in output and "--accounting-port" in output, output
    assert "--port-base" in output, output
    assert "eventledger is up" not in output and "Traceback" not in output, output
    assert processes_using(str(cleanup)) == []
    assert not any(answers(port) for name, port in ports.items() if name != "accounting")


def test_up_refuses_two_services_on_one_port(cleanup: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    process = start_up(
        cleanup,
        log,
        "--port-base",
        str(free_base()),
        "--console-port",
        str(port),
        "--stream-port",
        str(port),
    )
    assert process.wait(timeout=30.0) != 0
    output = log.read_text()
    assert f"both given port {port}" in output, output
    assert processes_using(str(cleanup)) == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["kill-9", "hangup"])
def test_up_serves_the_console_at_the_port_base_and_its_children_die_with_it(
    cleanup: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    base = free_base()
    log = tmp_path / "up.log"
    process = start_up(cleanup, log, "--port-base", str(base))
    try:
        wait_for(
            lambda: "press Ctrl-C" in log.read_text() or process.poll() is not None,
            timeout=90.0,
            what="eventledger up to start everything",
        )
        output = log.read_text()
        assert process.poll() is None, output
        for offset, name in enumerate(ORDER, start=1):
            health = httpx.get(f"http://{HOST}:{base + offset}/health", timeout=5.0)
            assert health.status_code == 200, (name, health.text)
            assert health.json()["service"] == name
            assert len(health.headers["X-Eventledger-Instance"]) == 32  # one of up's children
            assert f"http://{HOST}:{base + offset}" in output
        console = f"http://{HOST}:{base + 5}"
        # The console asks who you are, and `up` said with which token.
        assert httpx.get(f"{console}/", timeout=5.0).headers["location"] == "/signin?next=/"
        cli_token = cleanup / "tokens" / "cli.token"
        said = f"{console}/ (sign in with the token in {cli_token})"
        assert "".join(said.split()) in "".join(output.split())  # the terminal wraps lines
        with httpx.Client(base_url=console, timeout=5.0) as browser:
            signed = browser.post("/api/session", json={"token": cli_token.read_text().strip()})
            assert signed.status_code == 200 and signed.json()["name"] == "cli", signed.text
            page = browser.get("/")
        assert page.status_code == 200 and "signed in as <strong>cli</strong>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert set(httpx.get(f"{console}/health").json()["services"].values()) == {"up"}
        assert (cleanup / "tokens" / "console.token").exists()
        children = processes_using(str(cleanup))
        children.remove(process.pid)
        assert len(children) == 5, children

        process.send_signal(sig)  # neither leaves `up` a chance to stop them itself
        process.wait(timeout=5.0)
        wait_for(
            lambda: not any(alive(pid) for pid in children),
            timeout=15.0,
            what="every child of the killed up to exit",
        )
        assert not any(answers(base + offset) for offset in range(1, 6))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
