"""Who may call, and how much at once: the API-key and admission rules, as objects any transport applies
before any work (the HTTP guards in `http/guard.py`; a gRPC interceptor alike).

API keys come from an environment variable and/or a file (see `serving.config.AuthConfig`), are read on the
ingress replica, and are kept only as SHA-256 digests: a key never reaches config, logs or errors.
Comparison is constant-time (`hmac.compare_digest` over equal-length digests, every key checked).
Admission is a count of the requests one ingress replica holds: past `limits.max_pending_requests` a new
one is refused at once (cheap), so an overloaded service sheds load instead of queueing it into timeouts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import AuthConfigError
from ..serving.config import AuthConfig
from .errors import BodyTooLargeError, InvalidApiKeyError, MissingApiKeyError, OverloadedError


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


class ApiKeys:
    """The service's API keys (as digests); no keys: every caller is let in."""

    def __init__(self, digests: list[bytes]):
        self.digests = digests

    @property
    def enabled(self) -> bool:
        """Whether callers must show a key."""
        return bool(self.digests)

    def check(self, authorization: str | None) -> None:
        """Let the caller in, or raise: `MissingApiKeyError` without a bearer token, `InvalidApiKeyError` with
        a wrong one. `authorization` is the `Authorization` header's (or metadata's) value."""
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MissingApiKeyError()
        if not key_matches(token.strip(), self.digests):
            raise InvalidApiKeyError()


class PendingLimit:
    """The requests one ingress replica holds at once, refused past `limit` (`OverloadedError`)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.pending = 0

    def admit(self) -> None:
        """Hold one more request (`release` it when answered); `OverloadedError` at once when `limit` are held."""
        if self.pending >= self.limit:
            raise OverloadedError(f"the service is overloaded ({self.pending} requests pending, the limit of "
                                  "max_pending_requests); retry later")
        self.pending += 1

    def release(self) -> None:
        """One request held is answered."""
        self.pending -= 1

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold one request while this block runs (`admit`, then `release`)."""
        self.admit()
        try:
            yield
        finally:
            self.release()


def check_body_size(declared: int | None, limit: int) -> None:
    """`BodyTooLargeError` when a request declares a body over `limit` bytes (transports also stop reading
    one that grows past it)."""
    if declared is not None and declared > limit:
        raise BodyTooLargeError(declared, limit)
