"""One exception type per kind of failure. `http/errors.py` maps them to HTTP status codes in one place.

Errors raised in a model replica travel to the caller through Ray, which pickles them: each type
keeps its fields in `args` so it unpickles intact.
"""

from __future__ import annotations


class BgeM3Error(Exception):
    """Base class of every error this package raises on purpose."""


class ModelLoadError(BgeM3Error):
    """The model could not be loaded: a bad path, a failed download, corrupt weights."""


class MissingHeadsError(ModelLoadError):
    """The checkpoint lacks `colbert_linear.pt` or `sparse_linear.pt`; upstream would use random heads."""


class TextError(BgeM3Error):
    """A failure of one text, named by its index in the caller's list (`args[0]`)."""

    index: int

    def renumbered(self, positions: list[int]) -> TextError:
        """This error as the caller sees it when only `texts[i] for i in positions` were sent on."""
        return type(self)(positions[self.index], *self.args[1:])


class InputTooLongError(TextError):
    """A text is longer than `max_length` tokens and truncation was turned off."""

    def __init__(self, index: int, n_tokens: int, max_length: int):
        super().__init__(index, n_tokens, max_length)
        self.index, self.n_tokens, self.max_length = index, n_tokens, max_length

    def __str__(self) -> str:
        return (f"texts[{self.index}] has {self.n_tokens} tokens, more than max_length={self.max_length}; "
                "shorten it or send truncate=true")


class InvalidTextError(TextError):
    """A text is not valid Unicode (an unpaired surrogate, e.g. from a JSON `\\ud800` escape)."""

    def __init__(self, index: int, reason: str):
        super().__init__(index, reason)
        self.index, self.reason = index, reason

    def __str__(self) -> str:
        return f"texts[{self.index}] {self.reason}"


class InvalidTokenIdError(TextError):
    """A token id is outside the vocabulary: input `index` (a list of ids), its id at `position`."""

    def __init__(self, index: int, position: int, token_id: int, vocab_size: int):
        super().__init__(index, position, token_id, vocab_size)
        self.index, self.position, self.token_id, self.vocab_size = index, position, token_id, vocab_size

    def __str__(self) -> str:
        return (f"texts[{self.index}][{self.position}] is {self.token_id}, outside the vocabulary "
                f"[0, {self.vocab_size})")


class RequestTooLargeError(BgeM3Error):
    """A request exceeds a configured cap (texts, tokens or bytes per request)."""

    def __init__(self, param: str, value: int, limit: int, unit: str):
        super().__init__(param, value, limit, unit)
        self.param, self.value, self.limit, self.unit = param, value, limit, unit

    def __str__(self) -> str:
        return f"{self.param} has {self.value} {self.unit}, more than the limit of {self.limit}"


class RequestTimeoutError(BgeM3Error):
    """The request did not finish within its timeout or by its deadline; its texts not yet computed are
    dropped. `timeout_s` is None when the caller gave an absolute deadline."""

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

    def __init__(self, expected_s: float, remaining_s: float, retry_after_s: float):
        super().__init__(expected_s, remaining_s, retry_after_s)
        self.expected_s, self.remaining_s, self.retry_after_s = expected_s, remaining_s, retry_after_s

    def __str__(self) -> str:
        return (f"the model is overloaded: this request would finish in about {self.expected_s:.1f} s, after "
                f"its deadline ({max(self.remaining_s, 0.0):.1f} s left); retry in {self.retry_after_s:.0f} s")


class DeadlineTooShortError(BgeM3Error):
    """Refused on arrival: at the device's recent speed this request alone, with nothing queued ahead, would
    take well past its deadline (`serving.admission`). Retrying does not help: split it, or give it more
    time (`limits.request_timeout_s`, a handle caller's `timeout_s`). Nothing of it was computed."""

    def __init__(self, expected_s: float, remaining_s: float):
        super().__init__(expected_s, remaining_s)
        self.expected_s, self.remaining_s = expected_s, remaining_s

    def __str__(self) -> str:
        return (f"this request alone would take about {self.expected_s:.0f} s on this replica's device, longer "
                f"than its deadline allows ({max(self.remaining_s, 0.0):.0f} s): send fewer or shorter texts per "
                "request, or a longer timeout")


class RequestCancelledError(BgeM3Error):
    """The caller went away (its client disconnected) and cancelled the request; nothing more of it is
    computed. No one receives this answer: it is what the request's slot is filled with."""

    def __str__(self) -> str:
        return "the request was cancelled by its caller"


class AuthConfigError(BgeM3Error):
    """API keys were configured but cannot be read (the service refuses to start open)."""


class EncoderOutOfMemoryError(BgeM3Error):
    """Even a single text did not fit in device memory."""


class ModelUnavailableError(BgeM3Error):
    """The model deployment did not answer: still loading, or broken."""
