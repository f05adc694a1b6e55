"""Limits against abuse over real processes: subscriber caps per token and in all, slow and
idle connections, oversized headers, rate limits, and a quick, quiet shutdown under load.

The limits are set low (and the request deadline short) so that each test stays fast."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    HOST,
    Credentials,
    ServiceProcess,
    System,
    make_credentials,
    new_id,
    running,
    wait_for,
)

REQUEST_TIMEOUT = 1.0  # seconds a client has to send a request, in these tests
MAX_SUBSCRIBERS = 120
PER_CALLER = 100


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Credentials]]:
    """A system with tokens whose stream service has low subscriber caps and a short
    request deadline."""
    root = tmp_path_factory.mktemp("abuse")
    credentials = make_credentials(root, {"reader": ("events:read",), "reader2": ("events:read",)})
    system = System(root, credentials=credentials)
    system.stream.extra_args += [
        "--max-subscribers",
        str(MAX_SUBSCRIBERS),
        "--max-subscribers-per-caller",
        str(PER_CALLER),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
    ]
    with running(system):
        yield system, credentials


def stream_alone(root: Path, *args: str) -> ServiceProcess:
    """A stream service of its own (open, on loopback), for tests that stop or load it."""
    return ServiceProcess("stream", root / "stream", root / "logs", list(args))


async def raw_request(port: int, head: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


Subscription = tuple[int, str, asyncio.StreamReader, asyncio.StreamWriter]


async def subscribe_raw(port: int, token: str | None) -> Subscription:
    """Open `GET /events/subscribe` on a bare socket (hundreds cost little CPU this way):
    the status, the response head, and the connection, held open."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    reader, writer = await raw_request(
        port, f"GET /events/subscribe HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}\r\n"
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    status = int(head.split(" ", 2)[1])
    if status != 200:
        head += (await asyncio.wait_for(reader.read(4096), 10)).decode()
    return status, head, reader, writer


async def deposit_latencies(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], account: str, count: int
) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        response = await http.post(
            f"{url}/accounts/{account}/deposits", json={"amount": 1}, headers=headers
        )
        latencies.append(time.perf_counter() - start)
        assert response.status_code == 201, response.text
    return latencies


def live_subscribers(stream: ServiceProcess, headers: dict[str, str]) -> int | None:
    """The stream service's gauge of live subscribers, None while it does not answer."""
    try:
        metrics = httpx.get(f"{stream.url}/metrics", headers=headers, timeout=5).text
    except httpx.HTTPError:
        return None
    for line in metrics.splitlines():
        if line.startswith("eventledger_stream_subscribers "):
            return int(float(line.split()[1]))
    return None


async def test_subscribers_past_the_caps_are_refused_while_commands_and_reads_keep_their_latency(
    secured: tuple[System, Credentials],
) -> None:
    system, credentials = secured
    cli = credentials.bearer("cli")
    account = new_id()
    async with httpx.AsyncClient(timeout=10) as http:
        opened = await http.post(
            f"{system.transaction.url}/accounts",
            json={"account_id": account, "currency": "EUR"},
            headers=cli,
        )
        assert opened.status_code == 201, opened.text
        before = await deposit_latencies(http, system.transaction.url, cli, account, 10)
        # The two read models and the transaction service's cache follower (which its hold
        # expirer reads too) hold a subscription each: the rest of the total is ours.
        internal = 3
        wait_for(
            lambda: live_subscribers(system.stream, cli) == internal,
            timeout=30,
            what=f"{internal} internal subscribers on the stream service",
        )

        writers = []
        try:
            port = system.stream.port
            results = []
            for name in ("reader", "reader2"):  # 300 attempts, 30 at a time
                token = credentials.tokens[name]
                for _ in range(5):
                    batch = await asyncio.gather(*(subscribe_raw(port, token) for _ in range(30)))
                    results += [(name, status, head) for status, head, _, _ in batch]
                    writers += [w for _, _, _, w in batch]
            admitted = {n: sum(s == 200 for m, s, _ in results if m == n) for n in ("reader",)}
            refused = [head for _, status, head in results if status != 200]
            assert admitted["reader"] == PER_CALLER
            assert sum(s == 200 for _, s, _ in results) == MAX_SUBSCRIBERS - internal
            assert len(refused) == 300 - (MAX_SUBSCRIBERS - internal)
            for head in refused:
                assert head.startswith("HTTP/1.1 503"), head
                assert "retry-after: " in head.lower()
                assert "application/problem+json" in head and "too-many-subscribers" in head

            during = await deposit_latencies(http, system.transaction.url, cli, account, 10)
            balance = await http.get(
                f"{system.accounting.url}/accounts/{account}",
                headers={**cli, "X-Min-Position": "0"},
            )
            health = await http.get(f"{system.stream.url}/health")
        finally:
            for writer in writers:
                writer.close()
        assert balance.status_code == 200, balance.text
        assert health.status_code == 200
        # Idle subscribers cost each command a little fan-out, never seconds.
        assert statistics.median(during) < statistics.median(before) + 0.25, (before, during)


async def test_a_slowloris_of_idle_connections_neither_stops_other_clients_nor_stays_open(
    secured: tuple[System, Credentials],
) -> None:
    system, credentials = secured
    port = system.stream.port
    partial = f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Slow: "
    slow_body = (
        f"POST /streams/slow HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {credentials.tokens['transaction']}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"expected'
    )
    idle = [await raw_request(port, partial) for _ in range(300)]
    idle += [await raw_request(port, "") for _ in range(100)]
    bodies = [await raw_request(port, slow_body) for _ in range(20)]
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            start = time.perf_counter()
            health = await http.get(f"{system.stream.url}/health")
            read = await http.get(
                f"{system.stream.url}/events", headers=credentials.bearer("reader")
            )
            assert health.status_code == 200 and read.status_code == 200
            assert time.perf_counter() - start < 1.0

        async def answer(reader: asyncio.StreamReader) -> bytes:
            return await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT + 4)

        answers = await asyncio.gather(*(answer(r) for r, _ in idle))
        cut = await asyncio.gather(*(answer(r) for r, _ in bodies))
    finally:
        for _, writer in idle + bodies:
            writer.close()
    # Every idle connection was answered 408 and closed (read() returned at end of stream);
    # a body that never came was cut off too, the app seeing its client leave, quietly.
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:30] for a in answers}
    assert all(c == b"" for c in cut), {c[:30] for c in cut}
    assert "Traceback" not in system.stream.log_text()


async def test_oversized_and_too_many_headers_are_refused_at_once_and_malformed_requests_too(
    secured: tuple[System, Credentials],
) -> None:
    system, _ = secured
    port = system.stream.port
    host = f"Host: {HOST}:{port}\r\n"
    cases = {
        f"GET /health HTTP/1.1\r\n{host}X-Big: {'a' * 4_000_000}\r\n\r\n": b"HTTP/1.1 431",
        f"GET /health HTTP/1.1\r\n{host}"
        + "".join(f"X-{i}: 1\r\n" for i in range(500))
        + "\r\n": b"HTTP/1.1 431",
        "GET /health HTTP/1.1 garbage\r\n\r\n": b"HTTP/1.1 400",
        f"POST /streams/x HTTP/1.1\r\n{host}Content-Length: nope\r\n\r\n": b"HTTP/1.1 400",
    }
    for request, expected in cases.items():
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request.encode())
            answer = await asyncio.wait_for(reader.read(), 5)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # the server closed while the rest of a huge request was in flight
        finally:
            writer.close()
        assert answer.startswith(expected) or (expected.endswith(b"431") and answer == b""), (
            request[:60],
            answer[:80],
        )
        assert time.perf_counter() - start < 2.0
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{system.stream.url}/health")).status_code == 200


async def test_requests_past_the_rate_limit_are_answered_429_with_retry_after(
    tmp_path: Path,
) -> None:
    stream = stream_alone(tmp_path, "--rate-limit", "10/s")
    with ExitStack() as stack:
        stack.callback(stream.stop)
        stream.start().wait_healthy()
        async with httpx.AsyncClient(timeout=5) as http:
            answers = [await http.get(f"{stream.url}/events") for _ in range(40)]
            healths = [await http.get(f"{stream.url}/health") for _ in range(40)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited, [r.status_code for r in answers]
    assert all(r.status_code in (200, 429) for r in answers)
    for response in limited:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == "rate-limited"
        assert int(response.headers["retry-after"]) >= 1
    assert all(r.status_code == 200 for r in healths), "health is never rate limited"


async def test_a_stream_service_with_200_subscribers_stops_within_seconds_and_quietly(
    tmp_path: Path,
) -> None:
    stream = stream_alone(
        tmp_path, "--max-subscribers", "300", "--max-subscribers-per-caller", "300"
    )
    with ExitStack() as stack:
        stack.callback(stream.stop)
        stream.start().wait_healthy()
        async with httpx.AsyncClient(timeout=10) as http:
            for n in range(20):  # enough log that some subscribers are still catching up
                events = [{"type": "Noted", "data": {"pad": "x" * 1000}} for _ in range(100)]
                response = await http.post(
                    f"{stream.url}/streams/notes-{n}",
                    json={"expected_version": "any", "events": events},
                )
                assert response.status_code == 201, response.text
        subscribers = [await subscribe_raw(stream.port, None) for _ in range(200)]
        assert all(status == 200 for status, _, _, _ in subscribers)
        # Half of them read to the end, half never read a byte (the server's sends to them
        # wait on a full socket buffer).
        readers = [asyncio.create_task(reader.read()) for _, _, reader, _ in subscribers[:100]]
        start = time.monotonic()
        stream.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        while stream.running:  # noqa: ASYNC110 - a process exit offers nothing to await
            await asyncio.sleep(0.01)
        took = time.monotonic() - start
        assert stream.process.returncode == 0  # type: ignore[union-attr]
        await asyncio.wait_for(asyncio.gather(*readers), 5)  # each stream ended
        for _, _, _, writer in subscribers:
            writer.close()
    log = stream.log_text()
    assert took < 3.0, log[-2000:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
