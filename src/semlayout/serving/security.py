"""Bearer-token checks for the write endpoints (ground truth, feedback, admin).

- token not configured on the server -> 503 (the endpoint is disabled, not open);
- no `Authorization: Bearer ...` header -> 401 with `WWW-Authenticate: Bearer`;
- wrong token -> 403.
Tokens are compared with `hmac.compare_digest` (constant time). The admin token
also opens the API-token endpoints.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from semlayout.serving.deps import SettingsDep

bearer = HTTPBearer(auto_error=False, description="SEMLAYOUT_API_TOKEN or SEMLAYOUT_ADMIN_TOKEN")

_ENV = {"api": "SEMLAYOUT_API_TOKEN", "admin": "SEMLAYOUT_ADMIN_TOKEN"}


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_bearer(given: str | None, accepted: list[str], kind: Literal["api", "admin"]) -> None:
    if not accepted:
        raise HTTPException(503, detail=f"endpoint disabled: {_ENV[kind]} is not set on the server")
    if not given:
        raise HTTPException(
            401,
            detail="missing bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # compare against every accepted token so timing does not tell which one exists
    ok = False
    for expected in accepted:
        ok |= token_matches(given, expected)
    if not ok:
        raise HTTPException(403, detail="invalid token")


def require(kind: Literal["api", "admin"]) -> Callable[..., None]:
    """FastAPI dependency: `Depends(require("api"))`."""

    def dep(
        settings: SettingsDep, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> None:
        tokens = [t.get_secret_value() for t in (settings.admin_token,) if t]
        if kind == "api" and settings.api_token:
            tokens.insert(0, settings.api_token.get_secret_value())
        tokens = [t for t in tokens if t]
        check_bearer(cred.credentials if cred else None, tokens, kind)

    return dep
