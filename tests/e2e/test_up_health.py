"""`up` trusts a `/health` only from its own child: another server answering on the child's
port (a stale instance that took the port after the check) is named, never taken for it."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from eventledger.cli.output import CliError
from eventledger.cli.up import Child, Supervisor
from eventledger.config import load_settings
from tests.e2e.harness import HOST, free_port


class _Impostor(BaseHTTPRequestHandler):
    instance = ""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.instance:
            self.send_header("X-Eventledger-Instance", self.instance)
        self.end_headers()
        self.wfile.write(b'{"status": "ok", "service": "stream"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer((HOST, free_port()), _Impostor)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def child_process() -> Iterator[subprocess.Popen[str]]:
    """A live stand-in for a child: it runs, so only the health answer decides."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for supervisor in made:
        for child in supervisor.children:
            child.process.kill()
            child.process.wait()
            child.pump.join(timeout=5.0)
            for pipe in (child.process.stdin, child.process.stdout):
                if pipe is not None:
                    pipe.close()


def supervise(
    server: ThreadingHTTPServer,
    process: subprocess.Popen[str],
    instance: str,
    made: list[Supervisor],
) -> Supervisor:
    port = server.server_address[1]
    supervisor = Supervisor(load_settings({}, env={}), None)
    supervisor.children.append(Child("stream", f"http://{HOST}:{port}", port, instance, process))
    made.append(supervisor)
    return supervisor


def test_a_health_answer_from_another_process_is_named_not_trusted(
    server: ThreadingHTTPServer,
    child_process: subprocess.Popen[str],
    supervisors: list[Supervisor],
) -> None:
    _Impostor.instance = "0" * 32  # another instance's id, or none at all
    supervisor = supervise(server, child_process, "a" * 32, supervisors)
    with pytest.raises(
        CliError, match=f"something else answers on port {server.server_address[1]}"
    ):
        supervisor.wait_healthy(supervisor.children)


def test_the_child_s_own_health_answer_is_trusted(
    server: ThreadingHTTPServer,
    child_process: subprocess.Popen[str],
    supervisors: list[Supervisor],
) -> None:
    _Impostor.instance = "b" * 32
    supervisor = supervise(server, child_process, "b" * 32, supervisors)
    supervisor.wait_healthy(supervisor.children)  # returns: healthy
    assert httpx.get(f"{supervisor.children[0].url}/health").status_code == 200
