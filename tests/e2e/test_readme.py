"""The README walkthrough, executed: every `console` block run against a fresh system.

In the "A walkthrough" section of README.md, a line starting with `$ ` is a command (lines
ending in `\\` continue it) and the lines after it, up to the next command or the end of the
block, are its expected output. Each command runs with `bash -c`, in order, against a system
of its own (so positions start at 1 as in the README), with the default ports rewritten to
the system's. Output is compared after normalising what legitimately varies: UUIDs, times
and runs of whitespace within a line (rich tables are rendered at 100 columns); lines,
blank ones included, must match. A command whose README output starts with `error:` must
exit 1; every other one must exit 0. A command that only sets a shell variable (`TOKEN=…`,
no output) is run again before each later command, as the reader's shell would keep it.

The system requires tokens as under `eventledger up`: its credentials are made by the same
code (`credentials.provision`) in `./eventledger-data/` of the folder the commands run in,
where the command line finds its token as a reader's does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventledger.config import DEFAULT_PORTS, Settings
from eventledger.credentials import provision, read_token_file
from tests.e2e.harness import Credentials, System, cli_env, start_system

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## A walkthrough"


@dataclass(frozen=True)
class Step:
    command: str
    expected: str

    @property
    def expected_exit_code(self) -> int:
        return 1 if self.expected.startswith("error:") else 0

    @property
    def sets_a_variable(self) -> bool:
        return re.fullmatch(r"[A-Z_]+=\S.*", self.command) is not None and not self.expected


def walkthrough_steps(markdown: str) -> list[Step]:
    """The commands of the walkthrough's `console` blocks with their expected output."""
    section = markdown.split(SECTION, 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for block in re.findall(r"^```console\n(.*?)^```", section, flags=re.M | re.S):
        lines = block.splitlines()
        while lines:
            assert lines[0].startswith("$ "), f"a console block line outside a command: {lines}"
            command = [lines.pop(0).removeprefix("$ ")]
            while command[-1].endswith("\\"):
                command.append(lines.pop(0))
            output = []
            while lines and not lines[0].startswith("$ "):
                output.append(lines.pop(0))
            steps.append(Step("\n".join(command), "\n".join(output).strip()))
    return steps


def with_ports_of(system: System, command: str) -> str:
    """`command` with the default addresses (`localhost:8001`, …) pointing at `system`."""
    urls = {str(DEFAULT_PORTS[s.name]): s.url for s in system.services}
    return re.sub(
        r"(?:https?://)?(?:localhost|127\.0\.0\.1):(\d+)",
        lambda m: urls[m.group(1)],
        command,
    )


def normalised(text: str) -> str:
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)", "<time>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", text)
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


def test_the_readme_walkthrough_runs_as_written(
    request: pytest.FixtureRequest, tmp_path: Path, suite_store: str
) -> None:
    steps = walkthrough_steps(README.read_text(encoding="utf-8"))
    assert any(step.command.startswith("curl") for step in steps), "no curl command found"
    assert any(step.expected_exit_code == 1 for step in steps), "no failing command found"

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
            # `eventledger` is the script of the venv that runs the tests
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            COLUMNS="100",
            **{f"EVENTLEDGER_{s.name.upper()}_PORT": str(s.port) for s in system.services},
        )
        variables: list[str] = []
        for step in steps:
            command = with_ports_of(system, step.command)
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
                timeout=30,
            )
            ran = f"$ {command}\n{result.stdout}(exit {result.returncode})"
            assert (result.returncode, normalised(result.stdout)) == (
                step.expected_exit_code,
                normalised(step.expected),
            ), ran
