"""The FastAPI app factory: `create_app(settings)`.

Layout (FastAPI's "Bigger applications"): routers in `service/routes/`, one state object per app in
``app.state.service`` (`service.state.ServiceState`), errors in `service/errors.py`, metrics in
`service/metrics.py`. The model is loaded once, in the lifespan, in the background: the server answers
health checks while it loads, and ``/health/ready`` turns 200 only after the warm-up run.

``uvicorn --factory service.app:create_app`` builds the app from ``ALEXNET_*`` environment variables;
`alexnet-serve` (service/cli.py) is the usual way to start it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from service.errors import install_error_handlers
from service.metrics import Metrics, MetricsMiddleware
from service.model import ClassifierModel
from service.routes import health, metrics, models, predict
from service.settings import Settings
from service.state import RunnerFactory, ServiceState

log = logging.getLogger(__name__)

DESCRIPTION = """
Image classification with the AlexNet of Krizhevsky, Sutskever & Hinton (2012), evaluated the paper's way:
the shorter side resized to 256, the central 256×256 square, its four corner and centre 224×224 patches and
their horizontal reflections (ten patches), softmax averaged over the ten.

Send images to `POST /predict` as multipart/form-data in the repeatable field `files`. Every error is JSON
`{"detail": "..."}` naming what was wrong and which file.
"""

TAGS = [
    {"name": "predict", "description": "Classify images."},
    {"name": "models", "description": "The served model and the execution provider it runs on."},
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "metrics", "description": "Prometheus metrics."},
]


def _configure_logging(level: str) -> None:
    """Give the service's loggers a handler like uvicorn's (uvicorn configures only its own loggers)."""
    logger = logging.getLogger("service")
    logger.setLevel("DEBUG" if level == "trace" else level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app(settings: Settings | None = None, *, model: ClassifierModel | None = None,
               runner_factory: RunnerFactory | None = None) -> FastAPI:
    """Build the app. `model` (not yet loaded) and `runner_factory` let tests and embedders inject their own."""
    settings = settings if settings is not None else Settings()
    _configure_logging(settings.log_level)
    metrics_ = Metrics()
    state = ServiceState(settings, metrics_, model=model, runner_factory=runner_factory)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load(), name="load-model")
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
                with suppress(asyncio.CancelledError):
                    await loading
            await state.stop()

    app = FastAPI(
        title="AlexNet classification service",
        version="1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics_)
    app.include_router(predict.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app
