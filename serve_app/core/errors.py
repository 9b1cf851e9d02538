"""One exception type per kind of failure, each with a machine-readable `code`, the request field at fault
(`param`, when one is) and, for the kinds a retry can cure, `retry_after_s`. Every transport maps them in
one place (`http/errors.py` to HTTP status codes).

Errors raised in a model replica travel to the caller through Ray, which pickles them: each type
keeps its fields in `args` so it unpickles intact.
"""

from __future__ import annotations

from typing import Any

RETRY_AFTER_S = 1  # what an overloaded or restarting service asks a caller to wait, when nothing says better


class BgeM3Error(Exception):
    """Base class of every error this package raises on purpose."""

    code = "error"  # the kind, as a client reads it (e.g. `input_too_long`)
    param: str | None = None  # the request field at fault, e.g. `texts[3]`
    retry_after_s: float | None = None  # set where retrying later may succeed


class ModelLoadError(BgeM3Error):
    """The model could not be loaded: a bad path, a failed download, corrupt weights."""

    code = "model_load_failed"


class MissingHeadsError(ModelLoadError):
    """The checkpoint lacks `colbert_linear.pt` or `sparse_linear.pt`; upstream would use random heads."""


class TextError(BgeM3Error):
    """A failure of one input, named by its index in the caller's list (`args[0]`) and the request field that
    holds the list (`field`, the last of `args`: `texts` unless a caller renames it with `in_field`). An index of
    None names the field itself (it holds one input)."""

    index: int
    field: str

    @property
    def param(self) -> str:  # type: ignore[override]
        return self.field if self.index is None else f"{self.field}[{self.index}]"

    def renumbered(self, positions: list[int]) -> TextError:
        """This error as the caller sees it when only `inputs[i] for i in positions` were sent on."""
        return type(self)(positions[self.index], *self.args[1:])

    def in_field(self, field: str, index: Any = ...) -> TextError:
        """This error naming the input as `field[index]` (the index unchanged unless given)."""
        return type(self)(self.index if index is ... else index, *self.args[1:-1], field)


class InputTooLongError(TextError):
    """A text is longer than `max_length` tokens and truncation was turned off."""

    code = "input_too_long"

    def __init__(self, index: int, n_tokens: int, max_length: int, field: str = "texts"):
        super().__init__(index, n_tokens, max_length, field)
        self.index, self.n_tokens, self.max_length, self.field = index, n_tokens, max_length, field

    def __str__(self) -> str:
        return (f"{self.param} has {self.n_tokens} tokens, more than max_length={self.max_length}; "
                "shorten it or send truncate=true")


class InvalidTextError(TextError):
    """A text is not valid Unicode (an unpaired surrogate, e.g. from a JSON `\\ud800` escape), or not a text."""

    code = "invalid_text"

    def __init__(self, index: int, reason: str, field: str = "texts"):
        super().__init__(index, reason, field)
        self.index, self.reason, self.field = index, reason, field

    def __str__(self) -> str:
        return f"{self.param} {self.reason}"


class InvalidTokenIdError(TextError):
    """A token id is outside the vocabulary: input `index` (a list of ids), its id at `position`."""

    code = "invalid_token_id"

    def __init__(self, index: int, position: int, token_id: int, vocab_size: int, field: str = "texts"):
        super().__init__(index, position, token_id, vocab_size, field)
        self.index, self.position, self.token_id, self.vocab_size = index, position, token_id, vocab_size
        self.field = field

    @property
    def param(self) -> str:  # type: ignore[override]
        return f"{super().param}[{self.position}]"

    def __str__(self) -> str:
        return f"{self.param} is {self.token_id}, outside the vocabulary [0, {self.vocab_size})"


class RequestTooLargeError(BgeM3Error):
    """A request exceeds a configured cap (texts, tokens or bytes per request); `param` names the field."""

    code = "request_too_large"

    def __init__(self, param: str, value: int, limit: int, unit: str):
        super().__init__(param, value, limit, unit)
        self.param, self.value, self.limit, self.unit = param, value, limit, unit

    def in_field(self, field: str) -> RequestTooLargeError:
        """This error naming `field` as the one at fault."""
        return type(self)(field, *self.args[1:])

    def __str__(self) -> str:
        return f"{self.param} has {self.value} {self.unit}, more than the limit of {self.limit}"


class TooManyInputsError(RequestTooLargeError):
    """A request holds more inputs than `max_texts_per_request`."""

    code = "too_many_texts"


class RequestTimeoutError(BgeM3Error):
    """The request did not finish within its timeout or by its deadline; its texts not yet computed are
    dropped. `timeout_s` is None when the caller gave an absolute deadline."""

    code = "timeout"

    def __init__(self, timeout_s: float | None = None):
        super().__init__(timeout_s)
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        if self.timeout_s is None:
            return "the request did not finish by its deadline"
        return f"the request did not finish within {self.timeout_s:g} s"


class WouldMissDeadlineError(BgeM3Error):
    """Refused on arrival: at the device's recent speed, the tokens queued ahead and the request's own would
    finish after its deadline (`serving.admission`). Nothing of it was computed; retry after `retry_after_s`."""

    code = "would_miss_deadline"

    def __init__(self, expected_s: float, remaining_s: float, retry_after_s: float):
        super().__init__(expected_s, remaining_s, retry_after_s)
        self.expected_s, self.remaining_s, self.retry_after_s = expected_s, remaining_s, retry_after_s

    def __str__(self) -> str:
        return (f"the model is overloaded: this request would finish in about {self.expected_s:.1f} s, after "
                f"its deadline ({max(self.remaining_s, 0.0):.1f} s left); retry in {self.retry_after_s:.0f} s")


class BulkBacklogError(WouldMissDeadlineError):
    """A bulk request refused on arrival: the work queued ahead of it would take the device longer than the
    bulk lane waits (`BatchingConfig.bulk_max_wait_s`), so a backfill backs off before a query is ever
    refused. Nothing of it was computed; retry after `retry_after_s`."""

    code = "bulk_backlog_full"

    def __str__(self) -> str:
        return ("bulk work is refused for now: the model has more work queued than the bulk lane waits for "
                f"(user_config.bulk_max_wait_s); retry in {self.retry_after_s:.0f} s")


class DeadlineTooShortError(BgeM3Error):
    """Refused on arrival: at the device's recent speed this request alone, with nothing queued ahead, would
    take well past its deadline (`serving.admission`). Retrying does not help: split it, or give it more
    time (`limits.request_timeout_s`, a handle caller's `timeout_s`). Nothing of it was computed. `param`
    is the field holding the inputs, once a caller names it (`in_field`)."""

    code = "exceeds_deadline"

    def __init__(self, expected_s: float, remaining_s: float, param: str = "texts"):
        super().__init__(expected_s, remaining_s, param)
        self.expected_s, self.remaining_s, self.param = expected_s, remaining_s, param

    def in_field(self, field: str) -> DeadlineTooShortError:
        """This error naming `field` as the one at fault."""
        return type(self)(self.expected_s, self.remaining_s, field)

    def __str__(self) -> str:
        return (f"this request alone would take about {self.expected_s:.0f} s on this replica's device, longer "
                f"than its deadline allows ({max(self.remaining_s, 0.0):.0f} s): send fewer or shorter texts per "
                "request, or a longer timeout")


class RequestCancelledError(BgeM3Error):
    """The caller went away (its client disconnected) and cancelled the request; nothing more of it is
    computed. No one receives this answer: it is what the request's slot is filled with."""

    code = "cancelled"

    def __str__(self) -> str:
        return "the request was cancelled by its caller"


class AuthConfigError(BgeM3Error):
    """API keys were configured but cannot be read (the service refuses to start open)."""

    code = "auth_config"


class EncoderOutOfMemoryError(BgeM3Error):
    """Even a single text did not fit in device memory."""

    code = "out_of_memory"
    retry_after_s = RETRY_AFTER_S


class ModelUnavailableError(BgeM3Error):
    """The model deployment did not answer: still loading, or broken."""

    code = "model_unavailable"
    retry_after_s = RETRY_AFTER_S
