"""Prometheus metrics and the live progress line of a miner.

A private registry (not the process-global default) so several miners in one test
process never collide on metric names. ``serve(port)`` exposes it on
``settings.metrics_port``; with no port the metrics are still counted, just not served.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)


class MinerMetrics:
    """One miner's counters; create one per Miner (tests create many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.windows_trained = Counter("gauntlet_miner_windows_trained", "Windows trained and uploaded.", registry=r)
        self.windows_skipped = Counter(
            "gauntlet_miner_windows_skipped", "Windows not trained, by reason.", ["reason"], registry=r
        )
        self.upload_bytes = Counter("gauntlet_miner_upload_bytes", "Bytes of signed deltas uploaded.", registry=r)
        self.upload_seconds = Histogram(
            "gauntlet_miner_upload_seconds", "Wall time of one delta upload.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )
        self.window_seconds = Histogram(
            "gauntlet_miner_stage_seconds", "Wall time of each stage of a window.", ["stage"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900), registry=r,
        )
        self.inner_loss = Gauge("gauntlet_miner_inner_loss", "Last inner-step training loss.", registry=r)
        self.tokens_per_s = Gauge("gauntlet_miner_tokens_per_second", "Inner training throughput.", registry=r)
        self.window = Gauge("gauntlet_miner_window", "Window being worked on.", registry=r)
        self.last_uploaded = Gauge("gauntlet_miner_last_uploaded_window", "Last window uploaded.", registry=r)
        self.errors = Counter("gauntlet_miner_errors", "Errors by kind.", ["kind"], registry=r)

    def serve(self, port: int | None) -> None:
        if port is None:
            return
        start_http_server(port, registry=self.registry)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)


class ProgressLine:
    """A single self-overwriting status line on a terminal; plain periodic lines otherwise (logs)."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._last = 0.0

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif force or now - self._last >= self.every_s:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = now

    def done(self, text: str) -> None:
        """Finish the current line with a permanent summary."""
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()
