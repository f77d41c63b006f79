"""``ctrelay worker``: the delivery worker (:mod:`worker.delivery.app`) as a Celery worker process."""

from __future__ import annotations

import gc
import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

import structlog

from worker.core.settings import Settings, load
from worker.delivery.app import create_app
from worker.delivery.drain import Ticker
from worker.store.connections import broker
from worker.store.streams import ensure_groups

log = structlog.get_logger("ctrelay.worker")
GC_YOUNG_THRESHOLD = 50_000
"""Allocations between two young-generation collections in a worker (CPython's default: 700)."""


def _pool_of(argv: list[str]) -> str:
    for index, arg in enumerate(argv):
        if arg in ("-P", "--pool") and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--pool="):
            return arg.split("=", 1)[1]
        if arg.startswith("-P") and len(arg) > 2:
            return arg[2:]
    return "threads"


def _check_partitions(settings: Settings) -> None:
    """Refuse to start with another partition count than Redis's (waiting for Redis to answer, as Celery would)."""
    import time

    import redis

    from worker.core.errors import ConfigError
    from worker.core.keys import Keys
    from worker.store.connections import close, connect
    from worker.store.streams import claim_partitions

    client = None
    try:
        for attempt in itertools.count():
            try:
                client = client or connect(settings, timeout_s=10, connect_timeout_s=5)  # a cluster answers at once
                claim_partitions(client, Keys(settings.redis_prefix), settings.partitions)
                return
            except ConfigError as exc:
                log.error("partitions_mismatch", error=str(exc))
                raise SystemExit(f"ctrelay worker: {exc}") from None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if attempt % 10 == 0:
                    log.warning("partitions not checked yet: Redis does not answer", error=type(exc).__name__)
                time.sleep(1.0)
    finally:
        if client is not None:
            close(client)


def _ensure_groups(client: Any, keys: Any, partitions: int) -> None:
    """The consumer groups, waiting while Redis (or a cluster node) does not answer: a Redis restart while the worker
    starts must not leave it running without its ticker."""
    import time

    import redis

    for attempt in itertools.count():
        try:
            ensure_groups(client, keys, partitions)
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError) as exc:
            if attempt % 10 == 0:
                log.warning("consumer groups not created yet: Redis does not answer", error=type(exc).__name__)
            time.sleep(0.5)


def run_worker(argv: list[str]) -> None:
    """``ctrelay worker [celery worker options]``: drain the streams into CleverTap until stopped."""
    settings = Settings()
    multiproc_dir: Path | None = None
    if _pool_of(argv) in ("prefork", "processes"):
        multiproc_dir = Path(tempfile.mkdtemp(prefix="ctrelay-worker-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)  # read by prometheus-client in every child
    config = load(settings)
    broker(settings)  # a mode without a usable broker (a cluster without CTRELAY_BROKER_URL) stops here, clearly
    from worker.core.logs import configure

    configure(settings.log_level, settings.log_format)
    _check_partitions(settings)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # honour the directory set above
    from celery import signals

    from worker.delivery import metrics

    app, runtime = create_app(config)
    ticker: list[Ticker] = []
    served_on: list[int] = []  # the metrics port: the asked one, or the next free one when it is taken
    # A drain allocates ~30 objects per message and keeps a batch alive: collect young objects less often
    # (the default 700 makes the collector a fifth of the transform's cost) and never rescan start-up objects.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        gc.freeze()
        main = runtime()
        _ensure_groups(main.client, main.keys, settings.partitions)
        if settings.metrics_port:
            collector = metrics.ClusterCollector(
                main.client,
                main.keys,
                partitions=settings.partitions,
                accounts=[d.account_id for d in config.destinations.values()],
                destinations={key: d.name for key, d in config.destinations.items()},
                max_cap=settings.concurrency_cap,
            )
            served_on.append(metrics.serve(settings.metrics_port, metrics.registry(multiproc_dir, [collector])))
        ticker.append(Ticker(settings.tick_interval_s, main.tick))
        ticker[0].start()
        log.info(
            "worker_ready",
            partitions=settings.partitions,
            destinations=len(config.destinations),
            metrics_port=served_on[0] if served_on else 0,
        )

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: object) -> None:
        for thread in ticker:
            thread.stop()
        runtime().close()  # after the pool: every drain has finished

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exit(pid: int | None = None, **_: object) -> None:
        if multiproc_dir is not None and pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(multiproc_dir))  # type: ignore[no-untyped-call]

    stopping: list[str] = []

    @signals.worker_shutting_down.connect(weak=False)
    def _asked_to_stop(sig: str = "", **_: object) -> None:
        stopping.append(sig or "signal")

    level = "WARNING" if settings.log_level.lower() not in ("debug",) else "INFO"
    # Workers coordinate through Redis keys, not through Celery: gossip and mingle (worker-to-worker
    # broadcasts) are not needed, and their channels are what fails to restart after a broker outage.
    quiet = [flag for flag in ("--without-gossip", "--without-mingle") if flag not in argv]
    banner = [flag for flag in argv if flag in ("-q", "--quiet")][:1]  # Celery's global option: no start-up banner
    argv = [arg for arg in argv if arg not in ("-q", "--quiet")]
    try:
        app.worker_main([*banner, "worker", f"--loglevel={level}", *quiet, *argv])
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if code in (0, None) and not stopping and not _informational(argv):
        # Celery stopped by itself (an unrecoverable broker error): never report that as success, so that a
        # supervisor restarting on failure (compose, Kubernetes) starts the worker again
        log.error("worker_exited", reason="the Celery worker stopped without a shutdown signal", exit_status=1)
        code = 1
    raise SystemExit(code)


def _informational(argv: list[str]) -> bool:
    """``--help`` / ``--version``: Celery prints and exits 0 without running a worker."""
    return any(arg in ("-h", "--help", "--version") for arg in argv)
