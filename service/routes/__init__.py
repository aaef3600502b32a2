"""The API's routers, one module per area, gathered in `ROUTERS` (the order /docs lists them in)."""

from __future__ import annotations

from service.routes import docs, health, metrics, models, page, predict, repository, v2

ROUTERS = (predict.router, models.router, health.router, health.v2_router, v2.router, repository.router,
           metrics.router, docs.router, page.router)
