"""Indexing on a Ray cluster (DESIGN §9): plan work units once, decode in CPU tasks, embed in an
actor pool, write shards in tasks under per-attempt names, commit on the driver alone.

    config.py         RayConfig: address, unit size, pool sizing, watchdog
    connect.py        importing Ray (one line when the extra is missing), joining the cluster
    parquet_input.py  a Parquet listing of paths (optional captions and ids) as the run's input
    plan.py           the job: change detection's plan cut into work units, written once
    tasks.py          what runs on the cluster: decode tasks, the embed actor, shard writes
    progress.py       counts the tasks report, and the driver's progress line (rate, ETA)
    watchdog.py       which stage stopped making progress
    driver.py         the run: resume or plan, stream, commit finished units, finish
"""
