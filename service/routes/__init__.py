"""The API's routers, one module per area; each gets the per-app state through `get_state`."""

from __future__ import annotations

from fastapi import Request

from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service
