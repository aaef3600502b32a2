"""The OpenAPI schema and its Swagger UI, as FastAPI serves them, but behind `DocsKey`: with API keys on they
need a key only if ``ALEXNET_DOCS_REQUIRE_KEY=true`` (FastAPI's own docs routes take no dependencies)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from service.routes.deps import DocsKey

router = APIRouter(include_in_schema=False, dependencies=[DocsKey])


@router.get("/openapi.json")
async def openapi(request: Request) -> dict[str, Any]:
    return request.app.openapi()


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} — API docs")
