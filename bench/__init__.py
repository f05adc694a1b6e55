"""The benchmark suite: eventledger's event store beside a peer, in the same run.

    .venv/bin/python -m bench            # default run, about two minutes
    .venv/bin/python -m bench --quick    # smoke run, well under 30 s
    .venv/bin/python -m bench --http     # also end-to-end over the running stream service

Benchmarks are not tests: nothing here asserts a speed. Absolute times on a shared, noisy
machine mean little alone, so every workload runs against our store *and* against the peer
library `eventsourcing` (pyeventsourcing), interleaved, and the result that matters is the
ratio ours/peer of the medians.

Modules, one concept each:

    workloads.py   what is measured: workloads, sizes, the event payload, where data lives
    ours.py        the workloads on eventledger's stores (SQLite, PostgreSQL)
    peer.py        the same workloads on eventsourcing's recorders
    pg.py          PostgreSQL: the URL, fresh schemas, server facts
    runner.py      interleaved repeats, medians, paired ratios
    report.py      the console table and bench/results.md
    service.py     the optional end-to-end workload over the running stream service
"""
