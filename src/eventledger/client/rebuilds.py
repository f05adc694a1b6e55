"""Blue/green rebuilds of a read model (`POST /admin/rebuild {"mode": "blue-green"}`,
`GET` and `DELETE /admin/rebuild`), read strictly from the read model's answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from eventledger.client.errors import UnexpectedResponse
from eventledger.client.models import Fields

BuildState = Literal["building", "switching", "done", "failed"]
_STATES: dict[str, BuildState] = {
    "building": "building",
    "switching": "switching",
    "done": "done",
    "failed": "failed",
}


@dataclass(frozen=True, slots=True)
class BlueGreenBuild:
    """One blue/green rebuild: version `version` built from the log beside the live
    `from_version`, at `position` of `head`; `state` is `building` or `switching` while it
    goes on, `done` once the new version is live, `failed` with `error` (the old one serves)."""

    version: int
    from_version: int
    state: BuildState
    position: int
    head: int
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: str | None
    requested_by: str
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def active(self) -> bool:
        return self.state in ("building", "switching")

    @classmethod
    def from_json(cls, body: Any) -> BlueGreenBuild:
        f = Fields(body, "blue/green build")
        state = _STATES.get(f.text("state"))
        if state is None:
            raise UnexpectedResponse(f"{f.what}: state {f.doc['state']!r} is not a build state")
        finished = f.opt_text("finished_at")
        return cls(
            f.integer("version"),
            f.integer("from_version"),
            state,
            f.integer("position"),
            f.integer("head"),
            f.time("started_at"),
            f.time("updated_at"),
            None if finished is None else f.time("finished_at"),
            f.opt_text("error"),
            f.opt_text("requested_by") or "",
            f.doc,
        )


@dataclass(frozen=True, slots=True)
class RebuildStatus:
    """The answer of the three `/admin/rebuild` routes: the last blue/green build (None if
    there never was one) and the version the read model serves from."""

    build: BlueGreenBuild | None
    live_version: int

    @classmethod
    def from_json(cls, body: Any) -> RebuildStatus:
        f = Fields(body, "rebuild status")
        build = f.doc.get("blue_green")
        return cls(
            None if build is None else BlueGreenBuild.from_json(build),
            f.integer("live_version"),
        )
