"""GET /: a page that shows what the paper's ten-crop evaluation sees, served by this process on this port.

The page is plain HTML, CSS and JavaScript modules in `service/static/` (package data, in the wheel and the
serving image): no build step, no CDN, no external fonts, so it works offline and behind a firewall. It reads
`GET /v1/models` for the models and versions, and sends each photo to ``POST /predict?details=patches&square=true``,
which returns the ten patches' own top-k from the same model run as the average, the patches' boxes and the
256×256 square; the page only draws what the API returns (no geometry in JavaScript).

Everything it loads comes from here, and the Content-Security-Policy says so: no inline script or style, no
other origin. These routes stay open when the API needs a key: the page asks for the key itself (a 401 from
an API route opens its key form) and sends it as ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX = "/static"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8"}
# Images: the squares arrive as data: URLs. The browser asks for nothing outside this origin.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def page_files() -> dict[str, Path]:
    """The files the page consists of, by name: only these are ever served (no path from a request is opened)."""
    return {p.name: p for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in _MEDIA_TYPES}


def _serve(name: str) -> FileResponse:
    path = page_files().get(name)
    if path is None:
        raise NotFound(f"no such file of the page: {name!r}", reason="not_found")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def page() -> FileResponse:
    return _serve("index.html")


@router.api_route(STATIC_PREFIX + "/{name}", methods=["GET", "HEAD"])
async def static_file(name: str) -> FileResponse:
    return _serve(name)
