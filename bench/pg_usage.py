"""What a process costs the PostgreSQL server: the CPU of the server processes that serve its
connections, and the messages it sends them.

The connections of a process are found by `ss` (its TCP sockets to the server's port), their
server processes by `pg_stat_activity.client_port`, and their CPU time in /proc (the server
runs on this machine). `data_segs_out` of a socket counts the TCP segments that carried data
from the client, each one `send()` of its buffer: a statement, or a whole pipeline flushed
at once. A round trip sends at least one; the count per command is how chatty a process is
with its database, whatever the driver does inside.

Connections opened and closed within a phase are missed (a pool keeps them open).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.processes import CLOCK_TICKS

_SOCKET = re.compile(r"127\.0\.0\.1:(\d+)\s+\S+:(\d+)\s+users:\(\(.*?pid=(\d+),")
_SEGS = re.compile(r"\bdata_segs_out:(\d+)")


@dataclass(frozen=True)
class Usage:
    """Totals so far over the connections of some processes."""

    server_cpu: float  # seconds, the server processes serving them
    segments_out: int  # TCP segments with data, client -> server
    connections: int

    def minus(self, before: Usage) -> Usage:
        return Usage(
            self.server_cpu - before.server_cpu,
            self.segments_out - before.segments_out,
            self.connections,
        )


def usage(server_url: str, pids: set[int]) -> Usage:
    """What the processes `pids` have cost the server at `server_url` so far."""
    port = int(conninfo_to_dict(server_url).get("port") or 5432)
    sockets = _sockets(port, pids)
    if not sockets:
        return Usage(0.0, 0, 0)
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", [list(sockets)]
        ).fetchall()
    cpu = 0.0
    for (pid,) in rows:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return Usage(cpu, sum(sockets.values()), len(sockets))


def _sockets(server_port: int, pids: set[int]) -> dict[int, int]:
    """Local port -> data segments sent, of the established sockets of `pids` to the server."""
    text = subprocess.run(
        ["ss", "-tinpH", "state", "established", f"( dport = :{server_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[int, int] = {}
    local: int | None = None
    for line in text.splitlines():
        if match := _SOCKET.search(line):
            local = int(match.group(1)) if int(match.group(3)) in pids else None
        elif local is not None and (segs := _SEGS.search(line)):
            found[local] = int(segs.group(1))
            local = None
    return found
