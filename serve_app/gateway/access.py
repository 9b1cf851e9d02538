"""Who may call, and how much at once: the API-key and admission rules, as objects any transport applies
before any work (the HTTP guards in `http/guard.py`; a gRPC interceptor alike).

API keys come from an environment variable and/or a file (see `serving.config.AuthConfig`), are read on the
ingress replica, and are kept only as SHA-256 digests: a key never reaches config, logs or errors.
Comparison is constant-time (`hmac.compare_digest` over equal-length digests, every key checked).
Admission is a count of the requests one ingress replica holds: past `limits.max_pending_requests` a new
one is refused at once (cheap), so an overloaded service sheds load instead of queueing it into timeouts.
Bulk requests (backfills) are also counted on their own and refused first, past `limits.max_pending_bulk`
(a share of that limit): a flood of them leaves the rest of the slots to interactive requests.

A request's priority may be said twice by a transport (HTTP: the body's `priority` and the `X-Priority`
header); `choose_priority` is the one rule joining the two.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from ..core.errors import AuthConfigError
from ..serving.config import AuthConfig
from ..serving.schemas import PRIORITIES, Priority
from .errors import BodyTooLargeError, InvalidApiKeyError, InvalidRequestError, MissingApiKeyError, OverloadedError


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
    """The requests one ingress replica holds at once, refused past `limit` (`OverloadedError`); `what` names
    them and `setting` the limit in the refusal."""

    def __init__(self, limit: int, what: str = "requests", setting: str = "max_pending_requests"):
        self.limit = limit
        self.pending = 0
        self._what, self._setting = what, setting

    def check(self) -> None:
        """`OverloadedError` when `limit` are held, holding nothing (a transport's early refusal)."""
        if self.pending >= self.limit:
            raise OverloadedError(f"the service is overloaded ({self.pending} {self._what} pending, the limit of "
                                  f"{self._setting}); retry later")

    def admit(self) -> None:
        """Hold one more request (`release` it when answered); `OverloadedError` at once when `limit` are held."""
        self.check()
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


def parse_priority(value: str, param: str) -> Priority:
    """A priority sent as text (a header, metadata), or `InvalidRequestError` naming `param` and both values."""
    if value not in PRIORITIES:
        raise InvalidRequestError(param, f"{param}: must be one of {', '.join(map(repr, PRIORITIES))}",
                                  code="invalid_priority")
    return cast(Priority, value)


def choose_priority(field: Priority | None, header: Priority | None, header_name: str) -> Priority:
    """The request's priority from its body's `priority` field and its header (or metadata) `header_name`;
    neither: interactive. Both, disagreeing: `InvalidRequestError` (code `priority_conflict`). Neither can
    silently win: a client whose proxy marks it bulk must not jump the queue by its body, nor a proxy turn
    a client's explicit choice around unnoticed."""
    if field is not None and header is not None and field != header:
        raise InvalidRequestError("priority", f"priority: the body says {field!r} and the {header_name} header "
                                  f"{header!r}; send one, or the same in both", code="priority_conflict")
    return field or header or "interactive"
