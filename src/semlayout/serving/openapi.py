"""The OpenAPI schema, true to what the server answers (tests/test_serving_fuzz.py checks every
response against it with schemathesis).

FastAPI's generated schema says two things the server does not do, and misses one it does:
- a 422 body is `HTTPValidationError` (a list of errors); here every refusal, validation
  errors included, is the one `ErrorResponse` `{"detail": "<one line>"}`
  (`app.install_error_handlers`), so every 422 names that model;
- a malformed request (an unparsable multipart body, an invalid Content-Length) answers 400,
  which no route lists: every operation lists it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
MALFORMED = {
    "description": "malformed request: an unparsable multipart body or Content-Length",
    "content": {"application/json": {"schema": ERROR_REF}},
}


def install_openapi(app: FastAPI) -> None:
    """Replace `app.openapi` with the corrected schema (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = corrected(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def corrected(schema: dict[str, Any]) -> dict[str, Any]:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"]["content"] = {"application/json": {"schema": ERROR_REF}}
            responses.setdefault("400", MALFORMED)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
