"""What the `--serve-app` actors do with one block's rows, without Ray: cut them into requests, and judge each
answer (a result, a refused text, a request too large, a refusal to retry later, a lost replica).

A `Piece` is the rows (by index in the block) of one `EncodeRequest`. `judge` turns a request's answer into
what happens next: its rows embedded, a row filed as an error and the rest sent again, the rows sent again in
halves, or all of them sent again after a pause. Nothing is dropped and nothing is kept twice: a row's vectors
are taken from the one answer that carried them, and a row leaves the work only with vectors or an error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..core.errors import (
    DeadlineTooShortError,
    InvalidTokenIdError,
    RequestCancelledError,
    RequestTimeoutError,
    RequestTooLargeError,
    TextError,
)
from ..core.outputs import Embedding

REQUEST_BYTES = 16 << 10  # input bytes per request: ~4k tokens of text, a quarter of the default queue budget
REQUEST_ROWS = 64  # rows per request at most
TOKEN_ID_BYTES = 4  # what one token id weighs against text (a token is ~4 bytes of UTF-8 text)
BACKOFF_S, BACKOFF_MAX_S = 0.5, 10.0  # pause before resending when the failure says no Retry-After
JITTER = 0.5  # a pause is stretched by up to this share, so the job's actors do not come back in step


@dataclass(eq=False)  # by identity: two pieces are never the same work
class Piece:
    """The rows of one request (indices into the block), its failed attempts, and when it may be sent."""

    rows: list[int]
    attempts: int = 0
    ready_at: float = 0.0  # `time.monotonic()`
    first_failure: float | None = None


@dataclass
class Verdict:
    """What one answer means: vectors by row, rows filed as errors (row -> reason), pieces to send again."""

    embedded: dict[int, Embedding] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    resend: list[Piece] = field(default_factory=list)


def cut(rows: list[int], inputs: list) -> list[Piece]:
    """`rows` in order, in pieces of at most `REQUEST_ROWS` rows and about `REQUEST_BYTES` of input each."""
    pieces: list[Piece] = []
    current: list[int] = []
    size = 0
    for row in rows:
        weight = input_bytes(inputs[row])
        if current and (size + weight > REQUEST_BYTES or len(current) >= REQUEST_ROWS):
            pieces.append(Piece(current))
            current, size = [], 0
        current.append(row)
        size += weight
    return [*pieces, Piece(current)] if current else pieces


def input_bytes(value: str | list[int]) -> int:
    """About how much one input weighs (bytes of UTF-8 text, or `TOKEN_ID_BYTES` per token id)."""
    return len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) else TOKEN_ID_BYTES * len(value)


def retry_after(exc: BaseException) -> float | None:
    """Seconds to wait before sending again what `exc` failed (None: not a failure a retry cures).

    The service's 429-type refusals carry `retry_after_s` (`WouldMissDeadlineError`, `ModelUnavailableError`,
    ...); a replica that died or was replaced (`RayActorError`, Serve's `RequestCancelledError`, an unavailable
    deployment or replica), Serve's own back-pressure, and a request dropped at its timeout or cancelled are
    retried after a backoff (0: the caller's)."""
    seconds = getattr(exc, "retry_after_s", None)
    if isinstance(seconds, int | float):
        return float(seconds)
    from ray import exceptions as ray_errors  # here: the driver never calls this
    from ray.serve import exceptions as serve_errors

    transient = (ray_errors.RayActorError, ray_errors.ActorUnavailableError, ray_errors.TaskCancelledError,
                 serve_errors.BackPressureError, serve_errors.RequestCancelledError,
                 serve_errors.DeploymentUnavailableError, serve_errors.ReplicaUnavailableError,
                 RequestCancelledError, RequestTimeoutError, TimeoutError, ConnectionError)
    return 0.0 if isinstance(exc, transient) else None


def later(piece: Piece, exc: BaseException, now: float, give_up_s: float) -> Piece:
    """`piece` to send again after what `exc` asks (Retry-After) or an exponential backoff, stretched by a
    random jitter; `exc` is raised once the piece has been failing for `give_up_s` (the service is gone)."""
    first = now if piece.first_failure is None else piece.first_failure
    if now - first > give_up_s:
        raise RuntimeError(f"rows of this job kept failing for {now - first:.0f} s (last: {type(exc).__name__}: "
                           f"{exc}); is the application running?") from exc
    attempts = piece.attempts + 1
    base = retry_after(exc) or min(BACKOFF_S * 2 ** (attempts - 1), BACKOFF_MAX_S)
    return Piece(piece.rows, attempts, now + base * (1 + JITTER * random.random()), first)


def error_reason(exc: TextError) -> str:
    """A refused input's reason as the errors file words the readers' (no index into a request it never saw)."""
    if isinstance(exc, InvalidTokenIdError):
        return f"token ids[{exc.position}] is {exc.token_id}, outside the vocabulary [0, {exc.vocab_size})"
    return str(exc.in_field("text", None))


def halves(piece: Piece) -> list[Piece]:
    """`piece` split in two, each sent again at once (its attempts do not count: nothing failed)."""
    middle = len(piece.rows) // 2
    return [Piece(piece.rows[:middle]), Piece(piece.rows[middle:])]


def judge(piece: Piece, answer: object, now: float, give_up_s: float) -> Verdict:
    """What `answer` (an `EncodeResult`, already checked for identity, or the request's failure) means for the
    rows of `piece` (`now`: `time.monotonic()`; `give_up_s`: see `later`). A failure `retry_after` does not
    know is raised: the job stops rather than lose rows."""
    verdict = Verdict()
    if not isinstance(answer, BaseException):
        embeddings = answer.embeddings  # type: ignore[attr-defined]
        verdict.embedded.update(zip(piece.rows, embeddings, strict=True))
        return verdict
    if isinstance(answer, TextError) and answer.index is not None:
        bad = piece.rows[answer.index]  # one error row; the others go again, without it
        verdict.errors[bad] = error_reason(answer)
        rest = [row for row in piece.rows if row != bad]
        verdict.resend += [Piece(rest)] if rest else []
    elif isinstance(answer, RequestTooLargeError | DeadlineTooShortError):  # over the replica's budget: halve it
        if len(piece.rows) > 1:
            verdict.resend += halves(piece)
        else:
            verdict.errors[piece.rows[0]] = f"the service refused this text alone: {answer}"
    elif retry_after(answer) is not None:
        verdict.resend.append(later(piece, answer, now, give_up_s))
    else:
        raise answer
    return verdict
