"""The benchmark suite: eventledger beside a peer, in the same run (issue 9).

    .venv/bin/python -m bench              # `make bench`: everything, default sizes
    .venv/bin/python -m bench --quick      # everything, small sizes, about four minutes
    .venv/bin/python -m bench.http --quick # commands/s and reads/s vs the peer, SQLite, ~70 s
    .venv/bin/python -m bench --http       # also the store section over a running stream service

Benchmarks are not tests: nothing here asserts a speed, but the correctness gates (money
conserved, every acknowledged command visible) fail the run. Absolute times on a shared,
noisy machine mean little alone, so every workload runs against ours *and* a peer, the
`eventsourcing` library (pyeventsourcing), interleaved, and what matters is the ratio.

Modules, one concept each:

    __main__.py    the whole run: parts, results.md, the README block
    whole.py       the whole system on one backend: bulk, catch-up, commands, reads, memory
    http.py        load phases over HTTP, runs interleaved with the peer, CPU per operation
    load.py        the aiohttp load generator, a process of its own per phase
    processes.py   our services (through the CLI, with tokens) and the peer as processes
    peer_app.py    the HTTP peer: FastAPI + eventsourcing's Application, our account rules
    system_report.py  the whole-system tables and the README block
    store_size.py  append and read rates on an empty store and on a big one
    scale.py       the command side on 1, 2, 4 transaction instances (PostgreSQL)
    workloads.py   the in-process store workloads, sizes, the event payload
    ours.py        those workloads on eventledger's stores (SQLite, PostgreSQL)
    peer.py        the same workloads on eventsourcing's recorders
    pg.py          PostgreSQL: the URL, fresh schemas, server facts
    runner.py      interleaved repeats, medians, paired ratios
    report.py      the store section's table and bench/results.md
    service.py     the optional store workload over a running stream service
    auth_cost.py   the CPU cost of the security middleware per request
    edge.py        the CPU cost of each layer of a read over HTTP (middleware, route, query)
"""
