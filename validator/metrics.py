"""Prometheus metrics of the validator: what it scored, what it rejected and how long it took.

One private registry (not the process-global default) so tests and several validators in
one process never collide on metric names. ``serve(port)`` exposes it over HTTP on
``settings.metrics_port`` (scraped by deploy/prometheus/prometheus.yml), by the validator and by
each Stage-2 worker (its ``gauntlet_worker_*`` series); with no port set the metrics are still
counted, just not served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from protocol.follow import FollowStatus

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

WINDOWS_SCORED = Counter("gauntlet_windows_scored", "Windows scored by this validator.", registry=REGISTRY)
PEERS_EVALUATED = Counter(
    "gauntlet_peers_evaluated", "Peers whose delta went through both stages.", registry=REGISTRY
)
PEERS_SUBMITTED = Counter("gauntlet_peers_submitted", "Uploads found for scored windows.", registry=REGISTRY)
REJECTIONS = Counter(
    "gauntlet_rejections", "Peers rejected or missing, by stored reason.", ["reason"], registry=REGISTRY
)
WEIGHTS_SET = Counter("gauntlet_weights_set", "Weight sets submitted, by outcome.", ["outcome"], registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "gauntlet_stage_seconds",
    "Wall time of each pipeline stage per window.",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
LAST_SCORED_WINDOW = Gauge("gauntlet_last_scored_window", "Highest window scored.", registry=REGISTRY)
PEERS_UNEVALUATED = Gauge("gauntlet_peers_unevaluated",
                          "Accepted peers the last window's Stage-2 time budget left unevaluated.", registry=REGISTRY)
DEGRADED = Gauge("gauntlet_queue_degraded", "1 while Redis is unreachable and Stage 2 runs in-process.", registry=REGISTRY)

# Stage-2 workers (`gauntlet validator worker`) serve the same registry on their own metrics port.
WORKER_JOBS = Counter("gauntlet_worker_jobs", "Stage-2 jobs this worker finished, by outcome (ok, failed).",
                      ["outcome"], registry=REGISTRY)
WORKER_JOB_SECONDS = Histogram(
    "gauntlet_worker_job_seconds",
    "Wall time of one Stage-2 job on this worker (model sync, fetch, evaluation).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)

FOLLOW_IN_SYNC = Gauge("gauntlet_follow_in_sync", "1 while this validator follows the subnet's shared model.",
                       registry=REGISTRY)
FOLLOW_WINDOW = Gauge("gauntlet_follow_window", "Window whose start model (theta_W) this validator holds.",
                      registry=REGISTRY)
FOLLOW_PUBLISHER = Gauge("gauntlet_follow_publisher", "1 for the validator that publishes the next aggregate.",
                         ["hotkey", "model_hash"], registry=REGISTRY)
FOLLOW_FAILOVERS = Gauge("gauntlet_follow_failovers", "Windows in which the publisher failed over.", registry=REGISTRY)
FOLLOW_NULL_WINDOWS = Gauge("gauntlet_follow_null_windows", "Windows no proposal was on time for.", registry=REGISTRY)


def observe_follow(status: FollowStatus) -> None:
    FOLLOW_IN_SYNC.set(1 if status.in_sync else 0)
    if status.window is not None:
        FOLLOW_WINDOW.set(status.window)
    FOLLOW_PUBLISHER.clear()
    FOLLOW_PUBLISHER.labels(hotkey=status.publisher or "", model_hash=(status.model_hash or "")[:16]).set(1)
    FOLLOW_FAILOVERS.set(status.failovers)
    FOLLOW_NULL_WINDOWS.set(status.null_windows)


def observe_worker_job(ok: bool, seconds: float) -> None:
    WORKER_JOBS.labels(outcome="ok" if ok else "failed").inc()
    WORKER_JOB_SECONDS.observe(seconds)


@contextmanager
def timed(stage: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Observe the block's duration in ``STAGE_SECONDS`` (and store it in ``timings``)."""
    start = perf_counter()
    try:
        yield
    finally:
        elapsed = perf_counter() - start
        STAGE_SECONDS.labels(stage=stage).observe(elapsed)
        if timings is not None:
            timings[stage] = round(timings.get(stage, 0.0) + elapsed, 6)


def serve(port: int | None) -> None:
    """Start the HTTP exporter on ``port`` (no-op when None)."""
    if port is None:
        return
    start_http_server(port, registry=REGISTRY)
    log.info("metrics served on :%d/metrics", port)
