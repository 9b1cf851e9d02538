"""How the `--serve-app` actors judge each answer (`offline/serve_calls.py`), without Ray or Serve: the service's
own error types, as its replicas return them in `encode_many`'s list."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.errors import (
    InputTooLongError,
    InvalidTokenIdError,
    ModelUnavailableError,
    RequestTooLargeError,
    WouldMissDeadlineError,
)
from serve_app.core.outputs import Embedding
from serve_app.offline.serve_calls import REQUEST_ROWS, Piece, cut, judge
from serve_app.serving.schemas import EncodeResult, Timings


def test_rows_are_cut_by_bytes_and_count_in_order():
    inputs = ["x" * 6000] * 5 + ["y"] * 100 + [[1, 2, 3]]
    pieces = cut(list(range(len(inputs))), inputs)
    assert [row for p in pieces for row in p.rows] == list(range(len(inputs)))
    assert len(pieces[0].rows) == 2 and all(len(p.rows) <= REQUEST_ROWS for p in pieces)


def test_a_refused_text_is_its_rows_error_and_the_rest_go_again():
    verdict = judge(Piece([4, 7, 9]), InvalidTokenIdError(1, 2, 5000, 1000), now=0.0, give_up_s=600)
    assert verdict.errors == {7: "token ids[2] is 5000, outside the vocabulary [0, 1000)"}
    assert [p.rows for p in verdict.resend] == [[4, 9]] and verdict.resend[0].ready_at == 0.0
    verdict = judge(Piece([3]), InputTooLongError(0, 80, 64), now=0.0, give_up_s=600)
    assert verdict.errors == {3: "text has 80 tokens, more than max_length=64; shorten it or send truncate=true"}
    assert not verdict.resend


def test_too_large_is_halved_and_429s_wait_retry_after():
    verdict = judge(Piece([1, 2, 3, 4, 5]), RequestTooLargeError("texts", 20000, 16384, "tokens"), 0.0, 600)
    assert [p.rows for p in verdict.resend] == [[1, 2], [3, 4, 5]] and not verdict.errors
    [again] = judge(Piece([1, 2]), WouldMissDeadlineError(9.0, 3.0, retry_after_s=4.0), 100.0, 600).resend
    assert again.rows == [1, 2] and again.attempts == 1 and 104.0 <= again.ready_at <= 106.0
    [again] = judge(again, ModelUnavailableError("restarting"), 110.0, 600).resend
    assert again.attempts == 2 and again.first_failure == 100.0
    with pytest.raises(RuntimeError, match="kept failing for 601 s"):
        judge(again, ModelUnavailableError("restarting"), 701.0, 600)


def test_vectors_are_kept_by_row_and_an_unknown_failure_stops_the_job():
    first, second = (Embedding(dense=np.full(4, i, np.float32), n_tokens=3, truncated=False) for i in range(2))
    result = EncodeResult(embeddings=[first, second], prompt_tokens=6, timings=Timings(), batch_requests=1,
                          batch_texts=2)
    assert judge(Piece([8, 2]), result, 0.0, 600).embedded == {8: first, 2: second}
    with pytest.raises(KeyError):
        judge(Piece([1]), KeyError("a bug"), 0.0, 600)
