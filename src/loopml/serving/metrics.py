"""The server's Prometheus metrics, in one registry per app (so several apps can live in one process).

Labels are endpoint, model version and status: bounded sets, never per request. Under `loopml serve --workers N`
(PROMETHEUS_MULTIPROC_DIR set before the workers start) every worker writes its values to that directory and
`/metrics`, whichever worker answers, adds up all of them: gauges sum over the live workers.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METRIC_NAMES = (
    "loopml_requests_total",
    "loopml_request_duration_seconds",
    "loopml_requests_in_flight",
    "loopml_batch_size",
    "loopml_prediction_cache_requests_total",
    "loopml_prediction_log_queue_depth",
    "loopml_prediction_log_dropped_total",
    "loopml_shadow_predictions_total",
    "loopml_shadow_dropped_total",
    "loopml_feedback_total",
    "loopml_feature_lookup_log_dropped_total",
    "loopml_feature_read_seconds",
    "loopml_feature_age_seconds",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loopml_requests",
            "Prediction requests answered, by endpoint, model version and HTTP status.",
            ["endpoint", "version", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "loopml_request_duration_seconds",
            "Time to answer a prediction request.",
            ["endpoint", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "loopml_requests_in_flight",
            "Prediction requests being answered.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "loopml_batch_size",
            "Rows per model call (adaptive batching combines requests).",
            ["endpoint"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "loopml_prediction_cache_requests",
            "Prediction cache lookups by result (hit, miss, stale).",
            ["endpoint", "result"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "loopml_prediction_log_queue_depth",
            "Records waiting for the log writer.",
            ["dataset"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.dropped = Counter(
            "loopml_prediction_log_dropped",
            "Log records dropped because the queue was full.",
            registry=self.registry,
        )
        self.shadow = Counter(
            "loopml_shadow_predictions",
            "Rows mirrored to shadow routes (scored and logged by the shadow process, never returned).",
            ["endpoint", "version"],
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "loopml_shadow_dropped",
            "Rows not mirrored because the shadow process's queue was full (no spare capacity).",
            ["endpoint"],
            registry=self.registry,
        )
        self.feedback = Counter("loopml_feedback", "Labels received.", registry=self.registry)
        self.lookups_dropped = Counter(
            "loopml_feature_lookup_log_dropped",
            "Feature lookup log records dropped because the queue was full.",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The Prometheus text of this server: of this process, or of every worker process."""
        if not shared_by_workers():
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def close(self) -> None:
        """Take this process's gauges out of the workers' sums (it is stopping)."""
        if shared_by_workers():
            multiprocess.mark_process_dead(os.getpid())


def shared_by_workers() -> bool:
    return MULTIPROCESS_DIRECTORY in os.environ
