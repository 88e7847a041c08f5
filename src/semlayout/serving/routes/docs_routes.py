"""GET /docs (Swagger UI) and /redoc from assets shipped inside the package, so the API's
documentation works on an air-gapped network (FastAPI's default pages load them from a CDN).

The assets come from the npm packages `swagger-ui-dist` and `redoc`, vendored by
`tools/vendor_docs_assets.py` into `semlayout/serving/docs_assets/` with their licences and
checksums (SOURCES.json). Only the files listed there are served.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = Path(__file__).resolve().parents[1] / "docs_assets"
ASSET_PREFIX = "/docs/assets"

router = APIRouter(include_in_schema=False)
# the pages may load nothing from elsewhere: Redoc's sidebar logo would come from its CDN
# (decorative; it hides itself when it fails), the browser now refuses it before asking
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; "
    "font-src 'self' data:"
)


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


@functools.cache
def shipped_assets() -> frozenset[str]:
    """The file names SOURCES.json lists: nothing else under docs_assets/ is served."""
    sources = json.loads((ASSETS / "SOURCES.json").read_text())
    return frozenset(name for pkg in sources.values() for name in pkg["files"])


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSET_PREFIX}/{name}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon-32x32.png"),
    )
    return _local_only(page)


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=f"{request.scope.get('root_path', '')}{request.app.openapi_url}",
        title=f"{request.app.title} - API reference",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon-32x32.png"),
        with_google_fonts=False,
    )
    return _local_only(page)


@router.get(ASSET_PREFIX + "/{name}")
async def asset(name: str) -> FileResponse:
    if name not in shipped_assets():
        raise HTTPException(status_code=404, detail=f"no documentation asset named {name!r}")
    return FileResponse(ASSETS / name, headers={"Cache-Control": "public, max-age=86400"})
