"""The read side's plumbing, one module per concept:

* `projection` — the `Projection` protocol and `EventRejected` (what pure projections import);
* `commits` — where the log's atomic appends begin and end (pure, for projections);
* `db` — the read-model database (SQLite; `postgres` for PostgreSQL), its errors and sessions;
* `checkpoints` — the read side's own tables: checkpoints (position, hash, rebuild state) and
  the operator's decisions (skip, park) with the parked events;
* `apply` — one checkpointed transaction: a batch at commit boundaries, halts, decisions,
  resets; testable without HTTP;
* `subscription` — following the stream service's SSE feed; `envelopes` — decoding its
  events (orjson, with the standard library's answer wherever the two would differ);
* `runner` — the loop that applies the log to a read model; `status` — what it shows
  (health, the database probe, consistent read snapshots);
* `http` — what every read-model service has over HTTP (health, read-your-writes, rebuilding);
  `admin` — the operator's routes (rebuild, skip, park, decisions) and the metrics;
* `versions` — a read model's versions (a file or schema each), the control record naming the
  live one, the build lease; `bluegreen` — building the next version beside the live one and
  switching to it (zero-downtime rebuilds, docs/blue-green.md).
"""
