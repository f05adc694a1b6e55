"""`eventledger rebuild NAME --blue-green` against an accounting service served on a local
port: it shows the build until the switch and exits 0; a build that halts exits 1 with the
reason and the old version still serving; a second one while one runs is refused."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner

from eventledger.cli import app as cli
from eventledger.services.accounting.app import create_app
from eventledger.services.readside.db import SqliteReadModelDB
from tests.integration import readmodel_support as support
from tests.integration.readmodel_support import Ledger, StreamServer, caught_up, runner_of
from tests.integration.test_blue_green import _Buggy

clock, stream, log = support.clock, support.stream, support.log
invoker = CliRunner()


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """`app` (its lifespan included) served by uvicorn on a free 127.0.0.1 port; its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers nothing to await
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def accounting(stream: StreamServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setenv("EVENTLEDGER_DATA_DIR", str(tmp_path / "cli"))  # no token file
    return create_app(
        stream_url=stream.url,
        open_db=lambda: SqliteReadModelDB(tmp_path / "accounting.db", namespace="accounting"),
        head_poll_interval=0.05,
    )


async def rebuild(url: str, *args: str) -> tuple[int, str]:
    """Run the command in a thread (it polls the service, which runs on this loop)."""
    argv = ["rebuild", "accounting", "--blue-green", "--url", url, *args]
    result = await asyncio.to_thread(invoker.invoke, cli, argv, env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


async def test_rebuild_blue_green_shows_the_build_until_the_switch_and_exits_0(
    accounting: FastAPI, log: Ledger
) -> None:
    await log.open("a")
    head = await log.deposit("a", 10)
    async with served(accounting) as url:
        await caught_up(accounting, head)
        code, out = await rebuild(url)
        assert code == 0, out
        assert "is building version 2 of its read model beside version 1" in out
        assert f"{head}/{head}" in out  # the progress bar, complete
        assert f"Switched: version 2 of the accounting read model is live at position {head}" in out
        assert runner_of(accounting).version == 2


async def test_a_build_that_halts_exits_1_with_the_reason_and_the_old_version_serving(
    accounting: FastAPI, log: Ledger
) -> None:
    await log.open("a")
    bad = await log.deposit("a", 10)
    head = await log.deposit("a", 5)
    async with served(accounting) as url:
        await caught_up(accounting, head)
        runner = runner_of(accounting)
        runner.projection = _Buggy(runner.projection, bad)
        code, out = await rebuild(url)
        assert code == 1, out
        assert "the blue/green rebuild of accounting failed" in out
        assert f"halted at position {bad}" in out and "a bug met only by a replay" in out
        assert "version 1 goes on serving" in out
        assert runner.version == 1


async def test_a_second_blue_green_rebuild_while_one_runs_is_refused(
    accounting: FastAPI, stream: StreamServer, log: Ledger
) -> None:
    head = await log.open("a")
    async with served(accounting) as url:
        await caught_up(accounting, head)
        await stream.stop()  # the first build cannot replay: it stays in progress
        code, out = await rebuild(url, "--no-wait")
        assert code == 0 and "building version 2" in out
        code, out = await rebuild(url, "--no-wait")
        assert code == 1, out
        assert "a blue/green rebuild is already in progress (version 2: building)" in out
        await stream.start()
