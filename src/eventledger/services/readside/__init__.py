"""The read side's plumbing, one module per concept:

* `projection` — the `Projection` protocol and `EventRejected` (what pure projections import);
* `db` — the read-model database (SQLite or PostgreSQL), transactions, checkpoints;
* `subscription` — following the stream service's SSE feed;
* `runner` — the loop that applies the log to a read model, its halts and rebuilds;
* `http` — what every read-model service has over HTTP (health, admin, read-your-writes).
"""
