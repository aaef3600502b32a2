"""The FastAPI app factory: `create_app(settings)`.

Layout (FastAPI's "Bigger applications" and its full-stack template): routers in `service/routes/`, gathered
in `service.routes.ROUTERS`; one state object per app in ``app.state.service`` (`service.app_state.ServiceState`,
reached through the `StateDep` dependency); errors in `service/errors.py`, turned into JSON by
`service/error_handlers.py`; metrics in `service/metrics.py`. The model repository loads the models in the lifespan,
in the background: the server answers health checks while it loads, and ``/health/ready`` turns 200 only
after every model it serves has a warmed-up version.

``uvicorn --factory service.app:create_app`` builds the app from ``ALEXNET_*`` environment variables;
`alexnet-serve` (service/cli.py) is the usual way to start it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI

from service import logs
from service.app_state import RunnerFactory, ServiceState
from service.error_handlers import install_error_handlers
from service.metrics import Metrics, MetricsMiddleware
from service.observability import RequestMiddleware
from service.openapi import install_openapi
from service.pipeline import ModelLoader
from service.routes import ROUTERS
from service.server_info import VERSION
from service.settings import Settings
from service.tracing import Tracing

log = logging.getLogger(__name__)

DESCRIPTION = """
Image classification with the AlexNet of Krizhevsky, Sutskever & Hinton (2012), evaluated the paper's way:
the shorter side resized to 256, the central 256×256 square, its four corner and centre 224×224 patches and
their horizontal reflections (ten patches), softmax averaged over the ten.

Every model and version in the model store is served (by version policy), and new versions are rolled
over to while serving. Two ways in:

- `POST /predict`: images as multipart/form-data in the repeatable field `files`; errors are JSON
  `{"detail": "..."}` naming what was wrong and which file.
- The Open Inference Protocol (KServe v2, as Triton implements it) under `/v2`: `tritonclient` and
  KServe's clients work unchanged; errors are JSON `{"error": "..."}`.
"""

TAGS = [
    {"name": "predict", "description": "Classify images."},
    {"name": "models", "description": "The served models and versions and the execution provider each runs on."},
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "v2", "description": "The Open Inference Protocol (KServe v2 REST, Triton's HTTP API)."},
    {"name": "repository", "description": "Triton's model repository extension: index, load, unload."},
    {"name": "metrics", "description": "Prometheus metrics."},
]


def create_app(settings: Settings | None = None, *, loader: ModelLoader | None = None,
               runner_factory: RunnerFactory | None = None, span_exporter: Any = None) -> FastAPI:
    """Build the app. `loader` (version → loaded ClassifierModel) and `runner_factory` let tests and embedders
    inject their own; `span_exporter` (with tracing on) receives the spans instead of OTLP/HTTP."""
    settings = settings if settings is not None else Settings()
    logs.configure(settings.log_level, settings.log_format)  # uvicorn configures only its own loggers
    metrics_ = Metrics()
    tracing = Tracing.from_settings(settings, span_exporter)  # imports OpenTelemetry only when it is on
    state = ServiceState(settings, metrics_, loader=loader, runner_factory=runner_factory, tracing=tracing)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.start(), name="load-models")
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
                with suppress(asyncio.CancelledError):
                    await loading
            await state.stop()

    app = FastAPI(title="AlexNet classification service", version=VERSION, description=DESCRIPTION,
                  openapi_tags=TAGS, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = state
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics_)
    app.add_middleware(RequestMiddleware, sticky_header=settings.traffic_sticky_header, tracing=tracing,
                       log_requests=settings.access_log)  # outside the metrics: ids and logs cover all
    for router in ROUTERS:
        app.include_router(router)
    if tracing is not None:
        tracing.instrument(app)
    return app
