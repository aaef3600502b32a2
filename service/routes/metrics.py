"""Prometheus exposition."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from service.routes import get_state
from service.state import ServiceState

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"}})
async def metrics(state: Annotated[ServiceState, Depends(get_state)]) -> Response:
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)
