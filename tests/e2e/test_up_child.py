"""A child of `up` ends when `up` is gone, by either of its two ways (cli/child.py): the pipe
on its stdin closing (portable), or finding at start that its parent is already another."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.e2e.harness import cli_env

SLEEPER = (
    "import os, sys, time\n"
    "from eventledger.cli.child import die_with_parent\n"
    "die_with_parent(int(sys.argv[1]))\n"
    "print('watching', flush=True)\n"
    "time.sleep(60)\n"
)


def sleeper(parent: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SLEEPER, str(parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def test_a_child_ends_when_the_pipe_from_its_parent_closes() -> None:
    child = sleeper(os.getpid())
    try:
        assert child.stdout is not None and child.stdout.readline() == "watching\n"
        assert child.poll() is None
        assert child.stdin is not None
        started = time.monotonic()
        child.stdin.close()  # as when `up` dies: the kernel closes its end
        child.wait(timeout=15.0)
        assert time.monotonic() - started < 5.0
    finally:
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("parent", [1, 2**22 + 7])
def test_a_child_whose_parent_is_already_gone_ends_at_once(parent: int) -> None:
    child = sleeper(parent)  # we are its parent: `parent` is not, as after a re-parenting
    try:
        child.wait(timeout=15.0)
    finally:
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
