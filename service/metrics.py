"""Prometheus metrics, per app, correct with several uvicorn workers.

With one worker the metrics live in the app's own `CollectorRegistry`. With several, each worker is a
separate process, so `alexnet-serve` sets ``PROMETHEUS_MULTIPROC_DIR`` (an empty directory) before the
workers start; prometheus-client then keeps every value in a memory-mapped file there and ``/metrics``,
answered by whichever worker gets the request, adds up all workers' files (prometheus-client's
multiprocess mode). Gauges use the multiprocess modes noted below.

Requests are labelled by route template (``/predict``, never a raw URL), so labels stay few.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NAMESPACE = "alexnet"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PATCH_BUCKETS = (1, 2, 4, 8, 10, 16, 20, 32, 40, 64, 80, 100, 160, 200, 320, 640, 1280)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"], namespace=NAMESPACE, registry=r)
        self.latency = Histogram(
            "http_request_duration_seconds", "Time from the request's arrival to the end of the response.",
            ["route", "method"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "http_requests_in_flight", "Requests being handled now (summed over workers).",
            namespace=NAMESPACE, registry=r, multiprocess_mode="livesum")
        self.images = Counter(
            "images_processed", "Images classified successfully, by crop scheme.",
            ["crops"], namespace=NAMESPACE, registry=r)
        self.images_rejected = Counter(
            "images_rejected", "Uploaded files rejected, by reason (empty, unsupported, corrupt, too_large, ...).",
            ["reason"], namespace=NAMESPACE, registry=r)
        self.request_images = Histogram(
            "request_images", "Images per /predict request (the client's batch size).",
            namespace=NAMESPACE, buckets=IMAGES_BUCKETS, registry=r)
        self.inference_batch = Histogram(
            "inference_batch_patches", "Patches per model run (the batch the model sees).",
            namespace=NAMESPACE, buckets=PATCH_BUCKETS, registry=r)
        self.inference_time = Histogram(
            "inference_duration_seconds", "Time of one model run (ONNX Runtime session.run).",
            namespace=NAMESPACE, buckets=INFERENCE_BUCKETS, registry=r)
        self.inference_runs = Counter(
            "inference_runs", "Model runs, by session: `main` (all cores) or `instance` (one of the instance group).",
            ["session"], namespace=NAMESPACE, registry=r)
        self.queue_wait = Histogram(
            "inference_queue_seconds", "Time a request's patches waited in the batching queue before their run.",
            namespace=NAMESPACE, buckets=QUEUE_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            "inference_batch_requests", "Requests whose patches shared one model run (dynamic batching).",
            namespace=NAMESPACE, buckets=IMAGES_BUCKETS, registry=r)
        self.queued_requests = Gauge(
            "inference_queued_requests", "Requests waiting for a model run now (summed over workers).",
            namespace=NAMESPACE, registry=r, multiprocess_mode="livesum")
        self.preprocess_time = Histogram(
            "preprocess_duration_seconds", "Time to decode, resize and crop one image.",
            namespace=NAMESPACE, buckets=INFERENCE_BUCKETS, registry=r)
        self.admission_rejected = Counter(
            "admission_rejected", "Requests answered 503 at once because the service held too much in flight, by "
            "resource (bytes, images).", ["resource"], namespace=NAMESPACE, registry=r)
        self.inflight_bytes = Gauge(
            "inflight_bytes", "Request bytes held now (bodies being received or their images being classified).",
            namespace=NAMESPACE, registry=r, multiprocess_mode="livesum")
        self.inflight_images = Gauge(
            "inflight_images", "Images held now (parsed, being decoded or classified).",
            namespace=NAMESPACE, registry=r, multiprocess_mode="livesum")
        self.model_ready = Gauge(
            "model_ready", "1 while a model version is loaded, warmed up and serving (minimum over workers).",
            ["model", "version", "provider"], namespace=NAMESPACE, registry=r, multiprocess_mode="livemin")
        self.model_memory = Gauge(
            "model_memory_bytes", "Resident memory the process grew by when it loaded this version (per worker).",
            ["model", "version"], namespace=NAMESPACE, registry=r, multiprocess_mode="livemax")
        self.pipeline_step = Histogram(
            "pipeline_step_seconds", "Time of each pipeline step per call: preprocess (decode and cut all images), "
            "predict (wait for and run the model), postprocess (average and top-k).",
            ["model", "step"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS, registry=r)
        # per version, so a canary is judged from /metrics alone (service/dataplane.py, service/shadow.py)
        self.version_requests = Counter(
            "version_requests", "Inference requests answered by each model version, by HTTP status code (a "
            "request that names no version counts for the version its model's traffic split gave it).",
            ["model", "version", "code"], namespace=NAMESPACE, registry=r)
        self.version_latency = Histogram(
            "version_request_duration_seconds", "Time from a request's admission to its answer (or error), per "
            "model version.", ["model", "version"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS, registry=r)
        self.shadow_requests = Counter(
            "shadow_requests", "Shadow copies of requests, by shadow version and outcome: ok, error (its failure, "
            "never the client's), shed (not started, or given way, under load).",
            ["model", "version", "outcome"], namespace=NAMESPACE, registry=r)
        self.shadow_top1 = Counter(
            "shadow_top1", "Images a shadow version classified, by whether its top-1 class agreed with the answer "
            "the client got (agree: true or false).", ["model", "version", "agree"], namespace=NAMESPACE, registry=r)
        self.shadow_duration = Histogram(
            "shadow_duration_seconds", "Time of a shadow copy that ran (its decode, queue and model run).",
            ["model", "version"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS, registry=r)

    def exposition(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def worker_exit(self) -> None:
        """Drop this worker's live gauges from the multiprocess files (its counters stay summed)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware:
    """Pure ASGI middleware: count and time every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        method = scope.get("method", "GET")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            path = getattr(route, "path", None) or "<unmatched>"
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - start)
