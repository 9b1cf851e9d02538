"""Optional API keys: `Authorization: Bearer <key>` on every route but `/health`.

Keys come from an environment variable and/or a file (see `serving.config.AuthConfig`), are read on
the ingress replica, and are kept only as SHA-256 digests: a key never reaches config, logs or errors.
Comparison is constant-time (`hmac.compare_digest` over equal-length digests, every key checked).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.errors import AuthConfigError
from ..serving.config import AuthConfig
from .errors import ApiError, error_response

PUBLIC_PATHS = frozenset({"/health"})  # load balancers probe it without credentials


def is_public(scope: Scope) -> bool:
    """Whether the request is for one of `PUBLIC_PATHS`, judged as the router sees it: under a Serve
    `route_prefix`, ASGI's `path` still starts with the prefix, which `root_path` holds."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return path in PUBLIC_PATHS


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def load_api_keys(config: AuthConfig) -> list[bytes]:
    """Digests of the configured keys; empty when none is set (auth off)."""
    raw = os.environ.get(config.api_keys_env, "").replace("\n", ",").split(",")
    if config.api_keys_file:
        path = Path(config.api_keys_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:  # a configured but unreadable file must not silently turn auth off
            raise AuthConfigError(f"api_keys_file {str(path)!r} cannot be read: {exc.strerror}") from None
        if not any(line.strip() for line in lines):
            raise AuthConfigError(f"api_keys_file {str(path)!r} holds no key")
        raw += lines
    return [_digest(key.strip()) for key in raw if key.strip()]


def key_matches(token: str, digests: list[bytes]) -> bool:
    """Whether `token` is one of the keys; the time taken does not depend on which key or where it differs."""
    candidate = _digest(token)
    found = False
    for digest in digests:  # no early exit: every key is compared
        found |= hmac.compare_digest(candidate, digest)
    return found


class ApiKeyGuard:
    """ASGI middleware: 401 without a bearer token, 403 with a wrong one, pass-through for `PUBLIC_PATHS`."""

    def __init__(self, app: ASGIApp, digests: list[bytes]):
        self.app = app
        self.digests = digests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            error = ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", param="authorization",
                             code="missing_api_key", type_="authentication_error",
                             headers={"WWW-Authenticate": "Bearer"})
        elif not key_matches(token.strip(), self.digests):
            error = ApiError(403, "invalid API key", param="authorization", code="invalid_api_key",
                             type_="authentication_error")
        else:
            return await self.app(scope, receive, send)
        await error_response(error)(scope, receive, send)
