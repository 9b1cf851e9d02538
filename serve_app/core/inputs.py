"""What an encode call takes: its inputs (texts or lists of token ids), the outputs it asks for
(`EncodeOptions`, whose defaults every caller's defaults are), and a tokenized text.

The one home of the rules on inputs that every path applies (HTTP, the handle, the client, the offline
job): which of the four shapes a value has (`input_shape`), texts or token ids (`are_token_ids`), and
what a valid list of token ids is (`token_ids_problem`, `check_token_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from .errors import InvalidTextError, InvalidTokenIdError

OUTPUT_NAMES = ("dense", "sparse", "colbert")
Overflow = Literal["truncate", "chunk"]
InputShape = Literal["str", "list[str]", "list[int]", "list[list[int]]"]
Inputs = Sequence[str | Sequence[int]]  # texts, or lists of token ids: one kind per call (`are_token_ids`)
MAX_TOKEN_ID = 2**31  # past any vocabulary: the bound checked where the model's own is not known


def input_shape(value: object) -> InputShape | None:
    """Which of the four input shapes `value` has: a text, texts, one list of token ids, or a list of such lists;
    judged by its items, so a bad item is named in the shape the caller meant (`["a", None]`: texts; `[0, 1.5]`:
    ids). None when it has none, e.g. texts and id lists mixed. An empty list is texts (refused as empty)."""
    if isinstance(value, str):
        return "str"
    if not isinstance(value, list):
        return None
    has_text, has_list = any(isinstance(item, str) for item in value), any(isinstance(item, list) for item in value)
    if has_text and has_list:
        return None
    if has_list:
        return "list[list[int]]"
    ids = not has_text and any(isinstance(item, int) and not isinstance(item, bool) for item in value)
    return "list[int]" if ids else "list[str]"


def as_inputs(value: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]) -> list[str] | list[list[int]]:
    """Any of the four shapes as a list of inputs: one text or one list of ids is one input (a sequence of ids
    given as a tuple counts as a list)."""
    if isinstance(value, str):
        return [value]
    items = [item if isinstance(item, (str, int)) else list(item) for item in value]
    return cast("list[list[int]]", [items]) if input_shape(items) == "list[int]" else cast("list[str]", items)


def are_token_ids(inputs: Inputs) -> bool:
    """Whether `inputs` are lists of token ids (else texts); `ValueError` when they mix the two."""
    kinds = {isinstance(item, str) for item in inputs}
    if len(kinds) > 1:
        raise ValueError("inputs mix texts and lists of token ids: send one kind per call")
    return kinds == {False}


def text_problem(value: object) -> str | None:
    """Why `value` is not a text the tokenizer can take, said of it (`is null`, `is a int, not a string`,
    `contains an unpaired UTF-16 surrogate ...`: e.g. from a JSON `\\ud800` escape, and Arrow and the tokenizer
    need valid Unicode), or None."""
    if not isinstance(value, str):
        return "is null" if value is None else f"is a {type(value).__name__}, not a string"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired UTF-16 surrogate (not valid Unicode)"
    return None


def token_ids_problem(value: object, vocab_size: int | None = None) -> str | None:
    """Why `value` is not a list of token ids in `[0, vocab_size)` (any vocabulary when None), or None."""
    if not isinstance(value, list):
        return "null token ids" if value is None else f"token ids are a {type(value).__name__}, not a list"
    if not value:
        return "empty list of token ids"
    bound = MAX_TOKEN_ID if vocab_size is None else vocab_size
    for position, token_id in enumerate(value):
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            return f"token ids[{position}] is a {type(token_id).__name__}, not an integer"
        if not 0 <= token_id < bound:
            where = "any vocabulary" if vocab_size is None else f"the vocabulary [0, {vocab_size})"
            return f"token ids[{position}] is {token_id}, outside {where}"
    return None


def check_token_ids(inputs: Sequence[Sequence[int]], vocab_size: int, *, allow_empty: bool = False) -> None:
    """Raise for the first list of ids that is empty (`InvalidTextError`, unless allowed) or holds an id outside
    `[0, vocab_size)` (`InvalidTokenIdError`, naming the list and the id's place in it)."""
    for index, ids in enumerate(inputs):
        if not ids:
            if allow_empty:
                continue
            raise InvalidTextError(index, "is an empty list of token ids")
        if min(ids) < 0 or max(ids) >= vocab_size:  # one pass in C; find the culprit only when needed
            position = next(i for i, t in enumerate(ids) if not 0 <= t < vocab_size)
            raise InvalidTokenIdError(index, position, ids[position], vocab_size)


def require_an_output(dense: bool, sparse: bool, colbert: bool) -> None:
    """`ValueError` unless at least one of the three outputs is asked for."""
    if not (dense or sparse or colbert):
        raise ValueError("ask for at least one of dense, sparse, colbert")


@dataclass(frozen=True)
class EncodeOptions:
    """Which outputs to compute for a call, and what happens to a text over `max_length`. Its defaults are
    every caller's defaults (the handle's `EncodeRequest`, HTTP's `/encode`, the client).

    `sparse_tokens` asks for the sparse weights' token strings: an `Embedding` holds them beside the ids
    (HTTP's `/encode` then writes the strings in place of the ids). `truncate=False` refuses a text over
    `max_length` (`InputTooLongError`); `overflow="chunk"` encodes it as windows and merges them instead (see
    `chunking`), and then `truncate` does not apply.
    """

    dense: bool = True
    sparse: bool = True
    colbert: bool = False
    sparse_tokens: bool = False
    truncate: bool = True
    overflow: Overflow = "truncate"

    def __post_init__(self) -> None:
        require_an_output(self.dense, self.sparse, self.colbert)
        if self.overflow not in ("truncate", "chunk"):
            raise ValueError(f"overflow must be 'truncate' or 'chunk', not {self.overflow!r}")

    @property
    def outputs_tag(self) -> str:
        """The requested outputs as one string, e.g. "dense+sparse" (metrics tags)."""
        return "+".join(name for name in OUTPUT_NAMES if getattr(self, name))

    @property
    def cache_tag(self) -> str:
        """What a cached entry made with these options holds: the outputs, token strings, and how long texts
        were treated (a truncated entry must never answer a call that refuses truncation)."""
        extra = [name for name, on in (("tokens", self.sparse and self.sparse_tokens),
                                       ("chunk", self.overflow == "chunk"),
                                       ("strict", self.overflow != "chunk" and not self.truncate)) if on]
        return "+".join([self.outputs_tag, *extra])


@dataclass(frozen=True)
class TokenizedText:
    """Token ids of one text after truncation (special tokens included) and its untruncated length."""

    ids: list[int]
    n_tokens_full: int

    @property
    def n_tokens(self) -> int:
        """Tokens the model sees."""
        return len(self.ids)

    @property
    def truncated(self) -> bool:
        """Whether tokens were cut to fit `max_length`."""
        return self.n_tokens_full > len(self.ids)
