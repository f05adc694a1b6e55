"""docs/tutorial.md, executed: every `console` block run against a fresh system, in order.

As in the README walkthrough (tests/e2e/test_readme.py): a line starting with `$ ` is a command
(lines ending in `\\` continue it), the lines after it are its expected output; commands run with
`bash -c` in the folder that holds `eventledger-data/`, default ports rewritten to the system's,
a command that only sets a shell variable is kept for the later ones. Output is compared after
normalising UUIDs, times and runs of whitespace within a line; `[…]` in the expected output
stands for any text (ids, timings, the middle of a long output), across lines too.

A block right after an HTML comment starting with `<!-- background` is a command the reader
leaves running in another terminal (`eventledger tail`): it is started before the next command
and its output must match once the tutorial is through.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventledger.config import Settings
from eventledger.credentials import provision, read_token_file
from tests.e2e.harness import Credentials, cli_env, start_system
from tests.e2e.test_readme import normalised, with_ports_of

pytestmark = pytest.mark.slow

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
ANYTHING = "[…]"
BACKGROUND = "<!-- background"
TIMEOUT = 240  # seconds for one command: the benchmark's 3,000 commands on a busy machine


@dataclass(frozen=True)
class Step:
    command: str
    expected: str
    background: bool = False

    @property
    def expected_exit_code(self) -> int:
        return 1 if self.expected.startswith("error:") else 0

    @property
    def sets_a_variable(self) -> bool:
        return re.fullmatch(r"[A-Z_]+=\S.*", self.command) is not None and not self.expected


def tutorial_steps(markdown: str) -> list[Step]:
    steps: list[Step] = []
    pattern = r"(^<!-- background[^\n]*\n)?^```console\n(.*?)^```"
    for comment, block in re.findall(pattern, markdown, flags=re.M | re.S):
        lines = block.splitlines()
        while lines:
            assert lines[0].startswith("$ "), f"a console block line outside a command: {lines}"
            command = [lines.pop(0).removeprefix("$ ")]
            while command[-1].endswith("\\"):
                command.append(lines.pop(0))
            output = []
            while lines and not lines[0].startswith("$ "):
                output.append(lines.pop(0))
            steps.append(Step("\n".join(command), "\n".join(output).strip(), bool(comment)))
    return steps


def matches(expected: str, actual: str) -> bool:
    """Whether `actual` is `expected`, both normalised, `[…]` matching any text; a line of
    only `[…]` matches any number of lines, none included."""
    whole_line = "\x00"
    lines = [
        whole_line if line == ANYTHING else ".*?".join(map(re.escape, line.split(ANYTHING)))
        for line in normalised(expected).split("\n")
    ]
    pattern = "\n".join(lines)
    pattern = pattern.replace(f"\n{whole_line}\n", "(?:\n.*?)?\n")
    if pattern.startswith(f"{whole_line}\n"):
        pattern = "(?:.*?\n)?" + pattern.removeprefix(f"{whole_line}\n")
    if pattern.endswith(f"\n{whole_line}"):
        pattern = pattern.removesuffix(f"\n{whole_line}") + "(?:\n.*)?"
    pattern = pattern.replace(whole_line, ".*")
    return re.fullmatch(pattern, normalised(actual), flags=re.S) is not None


class Background:
    """A command left running, its output collected by a thread."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, condition: str, timeout: float) -> bool:
        """Whether the output matches `condition` within `timeout` (woken by each new line)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._ended or matches(condition, self.output), timeout
            ) and matches(condition, self.output)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C, as the reader stops it
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def test_the_expected_output_matching_rules() -> None:
    assert matches("position […] ([…] s).", "position 3457 (0.5 s).")
    assert matches("a\n[…]\nz", "a\nb\nc\nz")
    assert matches("a\n[…]\nz", "a\nz")
    assert matches("a\n[…]", "a") and matches("[…]\nz", "z") and matches("[…]", "")
    assert not matches("a\n[…]\nz", "a\nb")
    assert matches("id  […]", "id 0f8c1d2e-0000-4000-8000-000000000000")
    assert not matches("position […] (2 s).", "position 3457 (0.5 s)")
    assert not matches("balance 1500", "balance 1501")


def test_the_tutorial_runs_as_written(
    request: pytest.FixtureRequest, tmp_path: Path, suite_store: str
) -> None:
    steps = tutorial_steps(TUTORIAL.read_text(encoding="utf-8"))
    assert [s.command for s in steps if s.background] == ["eventledger tail"]
    commands = " ".join(s.command for s in steps)
    for taught in ("eventledger stream", "expected_version", "X-Min-Position", "rebuild"):
        assert taught in commands, taught

    installation = provision(Settings(data_dir=tmp_path / "eventledger-data"))
    credentials = Credentials(
        installation.auth_file,
        {name: read_token_file(path) for name, path in installation.token_files.items()},
        installation.token_files,
    )
    with ExitStack() as stack:
        system = start_system(
            request, stack, tmp_path / "system", suite_store, credentials=credentials
        )
        env = cli_env(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            COLUMNS="100",
            **{f"EVENTLEDGER_{s.name.upper()}_PORT": str(s.port) for s in system.services},
        )
        variables: list[str] = []
        background: list[tuple[Background, str]] = []
        for step in steps:
            command = with_ports_of(system, step.command)
            expected = with_ports_of(system, step.expected)
            if step.background:
                running = Background(command, tmp_path, env)
                stack.callback(running.stop)
                first_line = expected.splitlines()[0]
                # The reader starts it first: it must be following before the first command.
                assert running.wait_until(first_line + ANYTHING, 30), running.output
                background.append((running, expected))
                continue
            if step.sets_a_variable:
                variables.append(command)
            result = subprocess.run(
                ["bash", "-c", "\n".join([*variables, command])],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=TIMEOUT,
            )
            ran = f"$ {command}\n{result.stdout}(exit {result.returncode})"
            assert result.returncode == step.expected_exit_code, ran
            assert matches(expected, result.stdout), f"{ran}\n--- expected:\n{expected}"
        for running, expected in background:
            assert running.wait_until(expected, 30), (
                f"$ {running.process.args}\n{running.output[:5000]}\n--- expected:\n{expected}"
            )
