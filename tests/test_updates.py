"""`encode_stream`'s items on the wire (`serving.updates`): results travel as packed arrays and come back equal,
with the failures in their places."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
from ray import cloudpickle

from serve_app.core.errors import RequestTimeoutError, RequestTooLargeError
from serve_app.core.outputs import Embedding
from serve_app.serving.schemas import EncodeResult, Timings
from serve_app.serving.updates import PACKED_EMBEDDING_FIELDS, PACKED_RESULT_FIELDS, GroupUpdate


def _result(embeddings: list[Embedding], identity: str, n: int) -> EncodeResult:
    return EncodeResult(embeddings=embeddings, prompt_tokens=sum(e.n_tokens for e in embeddings),
                        timings=Timings(tokenization_ms=0.1 * n, queue_ms=1.5 * n, inference_ms=2.25 * n),
                        batch_requests=n, batch_texts=2 * n, identity=identity)


def _assert_same(got: EncodeResult, want: EncodeResult) -> None:
    assert got.model_dump(exclude={"embeddings"}) == want.model_dump(exclude={"embeddings"})
    assert len(got.embeddings) == len(want.embeddings)
    for g, w in zip(got.embeddings, want.embeddings, strict=True):
        for field in dataclasses.fields(Embedding):
            a, b = getattr(g, field.name), getattr(w, field.name)
            if isinstance(b, np.ndarray):
                assert isinstance(a, np.ndarray) and a.dtype == b.dtype, field.name
                np.testing.assert_array_equal(a, b, err_msg=field.name)
            else:
                assert a == b, field.name


def test_results_cross_the_wire_as_arrays_and_come_back_equal_with_failures_in_place(direct):
    every = direct.encode(["a short query", "a longer passage about the museum in the city"],
                          dense=True, sparse=True, colbert=True, sparse_tokens=True)
    dense_only = direct.encode(["only the dense vector"], dense=True, sparse=False, colbert=False)
    sparse_only = direct.encode(["only the lexical weights", "and another"], dense=False, sparse=True)
    answers = [(3, _result(every, "replica-a", 1)), (0, RequestTimeoutError(5.0)),
               (1, _result(dense_only, "replica-a", 2)), (4, _result(sparse_only, "replica-b", 3)),
               (2, RequestTooLargeError("texts", 9000, 8192, "tokens"))]
    wire = cloudpickle.dumps(GroupUpdate("replica-a", answers))  # as Ray pickles a streamed item
    assert b"Embedding" not in wire and b"EncodeResult" not in wire  # no object per request or per text
    back = pickle.loads(wire)
    assert back.replica == "replica-a" and [i for i, _ in back.answers] == [3, 0, 1, 4, 2]
    for (_, got), (_, want) in zip(back.answers, answers, strict=True):
        if isinstance(want, EncodeResult):
            _assert_same(got, want)
        else:
            assert type(got) is type(want) and str(got) == str(want)


def test_an_update_of_failures_only_or_of_nothing_crosses_the_wire():
    for answers in ([], [(0, RequestTimeoutError(1.0))]):
        back = pickle.loads(cloudpickle.dumps(GroupUpdate(None, answers)))
        assert back.replica is None and [(i, str(a)) for i, a in back.answers] == [(i, str(a)) for i, a in answers]


def test_every_field_of_a_result_and_of_an_embedding_is_packed():
    """A field added to `EncodeResult` or `Embedding` would be lost on the wire unless `PackedResults`
    carries it."""
    assert set(EncodeResult.model_fields) == set(PACKED_RESULT_FIELDS)
    assert {f.name for f in dataclasses.fields(Embedding)} == set(PACKED_EMBEDDING_FIELDS)
