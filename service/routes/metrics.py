"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.routes.deps import MetricsKey, StateDep

router = APIRouter(tags=["metrics"], dependencies=[MetricsKey])


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"}})
async def metrics(state: StateDep) -> Response:
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)
