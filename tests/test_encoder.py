"""The encoder core on the small checkpoint: parity with FlagEmbedding, batching, truncation, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from serve_app.core.cache import CacheConfig
from serve_app.core.cache.cached_encoder import CachingEncoder
from serve_app.core.config import EncoderConfig
from serve_app.core.encoder import Encoder
from serve_app.core.errors import (
    EncoderOutOfMemoryError,
    InputTooLongError,
    InvalidTextError,
    InvalidTokenIdError,
    MissingHeadsError,
    ModelLoadError,
)
from serve_app.core.inputs import EncodeOptions
from serve_app.core.scoring import ScoreWeights, compute_scores
from serve_app.serving.config import AppArgs
from tests.support.reference import tei_tokens

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def config_128(encoder_config) -> EncoderConfig:
    """The shared settings with MAX_LENGTH tokens a text: among `mixed_texts`, one is cut and one is longer
    than 64 tokens without being cut (what parity with FlagEmbedding needs)."""
    return encoder_config.model_copy(update={"max_length": MAX_LENGTH})


@pytest.fixture(scope="module")
def encoder(config_128) -> Encoder:
    return Encoder(config_128)


@pytest.fixture(scope="module")
def upstream(tiny_model_dir):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(tiny_model_dir, use_fp16=False, devices="cpu", normalize_embeddings=True)


@pytest.fixture(scope="module")
def upstream_out(upstream, mixed_texts):
    return upstream.encode(mixed_texts, batch_size=3, max_length=MAX_LENGTH, return_dense=True,
                           return_sparse=True, return_colbert_vecs=True)


def test_mixed_batch_has_what_parity_needs(encoder, mixed_texts):
    tokenized = encoder.tokenize(mixed_texts)
    assert any(t.truncated for t in tokenized) and any(t.n_tokens > 64 and not t.truncated for t in tokenized)
    assert tokenized[3].ids == [0, 2]


def assert_same_as_upstream(ours, upstream_out) -> None:
    """Dense, sparse and ColBERT outputs equal FlagEmbedding's, text by text."""
    assert len(ours) == len(upstream_out["dense_vecs"])
    for i, out in enumerate(ours):
        np.testing.assert_allclose(out.dense, upstream_out["dense_vecs"][i], atol=1e-5, err_msg=f"dense {i}")
        theirs = {int(k): float(v) for k, v in upstream_out["lexical_weights"][i].items()}
        ours_sparse = out.lexical_weights()
        assert set(ours_sparse) == set(theirs), f"sparse ids {i}"
        np.testing.assert_allclose([ours_sparse[k] for k in sorted(theirs)], [theirs[k] for k in sorted(theirs)],
                                   atol=1e-5, err_msg=f"sparse weights {i}")
        assert out.colbert.shape == upstream_out["colbert_vecs"][i].shape, f"colbert rows {i}"
        np.testing.assert_allclose(out.colbert, upstream_out["colbert_vecs"][i], atol=1e-5, err_msg=f"colbert {i}")


def test_parity_with_flagembedding(encoder, upstream_out, mixed_texts):
    assert_same_as_upstream(encoder.encode(mixed_texts, dense=True, sparse=True, colbert=True), upstream_out)


def test_literal_special_token_strings_in_text_match_flagembedding(encoder, upstream, hf_tokenizer):
    """A user may type `<pad>` or `</s>`: it tokenizes to that special id inside the text, and upstream
    attends to it like any token (only real padding is masked)."""
    texts = ["river <pad> library", "<pad>", "<s> start of a longer sentence about mountains", "end </s> here",
             "what <unk> is", "fill the <mask> in", "<pad><pad> all <s></s><unk><mask> of them <pad>", "plain"]
    specials = {hf_tokenizer.convert_tokens_to_ids(t) for t in ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]}
    for text, tokens in zip(texts, encoder.tokenize(texts), strict=True):
        assert "<" not in text or specials & set(tokens.ids[1:-1]), text  # really the special ids, mid-text
    theirs = upstream.encode(texts, batch_size=4, max_length=MAX_LENGTH, return_dense=True, return_sparse=True,
                             return_colbert_vecs=True)
    assert_same_as_upstream(encoder.encode(texts, dense=True, sparse=True, colbert=True), theirs)


def test_scores_match_compute_score(encoder, upstream, mixed_texts):
    query, passages = mixed_texts[0], [mixed_texts[1], mixed_texts[2], mixed_texts[5]]
    weights = [0.4, 0.2, 0.4]
    theirs = upstream.compute_score([(query, p) for p in passages], batch_size=1, max_query_length=MAX_LENGTH,
                                    max_passage_length=MAX_LENGTH, weights_for_different_modes=weights)
    q, *ps = encoder.encode([query, *passages], colbert=True)
    for j, p in enumerate(ps):
        ours = compute_scores(q, p, ScoreWeights(*weights))
        for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"):
            assert ours[key] == pytest.approx(theirs[key][j], abs=1e-5), key


def test_only_requested_outputs_are_computed(encoder, mixed_texts):
    out = encoder.encode(mixed_texts[:2], dense=False, sparse=False, colbert=True)[0]
    assert out.dense is None and out.sparse_indices is None and out.colbert is not None
    with pytest.raises(ValueError):
        encoder.encode(mixed_texts[:1], dense=False, sparse=False, colbert=False)


def test_accepts_tokenized_input(encoder, mixed_texts):
    direct = encoder.encode(mixed_texts)
    via_ids = encoder.encode(encoder.tokenize(mixed_texts))
    for a, b in zip(direct, via_ids, strict=True):
        np.testing.assert_array_equal(a.dense, b.dense)


@pytest.mark.parametrize("budget", [8, 200, 1_000_000])
def test_results_do_not_depend_on_batching(config_128, encoder, mixed_texts, budget):
    other = Encoder(config_128.model_copy(update={"max_forward_tokens": budget}))
    reference = encoder.encode(mixed_texts, colbert=True)
    # Also shuffle which texts share a batch.
    order = np.random.default_rng(0).permutation(len(mixed_texts))
    shuffled = other.encode([mixed_texts[i] for i in order], colbert=True)
    for pos, i in enumerate(order):
        np.testing.assert_allclose(shuffled[pos].dense, reference[i].dense, atol=1e-5)
        np.testing.assert_array_equal(shuffled[pos].sparse_indices, reference[i].sparse_indices)
        np.testing.assert_allclose(shuffled[pos].sparse_values, reference[i].sparse_values, atol=1e-5)
        np.testing.assert_allclose(shuffled[pos].colbert, reference[i].colbert, atol=1e-5)


def test_bf16_drift_is_bounded(config_128, encoder, mixed_texts):
    bf16 = Encoder(config_128.model_copy(update={"dtype": "bf16"}))
    assert bf16.dtype == torch.bfloat16
    for a, b in zip(encoder.encode(mixed_texts), bf16.encode(mixed_texts), strict=True):
        assert float(np.dot(a.dense, b.dense)) >= 0.999
        if len(a.sparse_indices):
            top_fp32 = a.sparse_indices[np.argmax(a.sparse_values)]
            assert top_fp32 in set(b.sparse_indices[np.argsort(-b.sparse_values)[:3]])


def test_truncation_flags_and_token_counts(encoder, mixed_texts, hf_tokenizer):
    tokenized = encoder.tokenize(mixed_texts)
    outs = encoder.encode(mixed_texts, colbert=True)
    for text, tok, out in zip(mixed_texts, tokenized, outs, strict=True):
        full = len(hf_tokenizer(text)["input_ids"])
        assert out.truncated == (full > MAX_LENGTH)
        assert out.n_tokens == min(full, MAX_LENGTH) == tok.n_tokens
        assert out.colbert.shape[0] == out.n_tokens - 1
        assert tok.ids[-1] == hf_tokenizer.eos_token_id
    assert encoder.tokenize([mixed_texts[-1]])[0].ids == hf_tokenizer(
        mixed_texts[-1], truncation=True, max_length=MAX_LENGTH)["input_ids"]


def test_truncate_false_names_the_text(encoder, mixed_texts):
    with pytest.raises(InputTooLongError) as info:
        encoder.tokenize(["short", mixed_texts[-1]], truncate=False)
    assert info.value.index == 1 and info.value.n_tokens > MAX_LENGTH
    assert "texts[1]" in str(info.value)


def test_sparse_token_strings(encoder, hf_tokenizer):
    out = encoder.encode(["東京 library"], sparse_tokens=True)[0]
    assert out.sparse_tokens == [hf_tokenizer.decode([i]) for i in out.sparse_indices.tolist()]
    assert out.sparse_indices.dtype == np.int32 and out.sparse_values.dtype == np.float32
    assert np.all(out.sparse_values > 0) and np.all(np.diff(out.sparse_indices) > 0)


def test_oom_halves_the_batch_and_retries(config_128, encoder, mixed_texts, monkeypatch):
    reference = encoder.encode(mixed_texts)
    victim = Encoder(config_128.model_copy(update={"min_length_ratio": 0.0}))  # one batch of all texts, to be split
    real_forward, seen = victim.forward, []

    def forward_that_fits_two(batch):
        seen.append(batch.input_ids.shape[0])
        if batch.input_ids.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("injected")
        return real_forward(batch)

    monkeypatch.setattr(victim, "forward", forward_that_fits_two)
    for a, b in zip(victim.encode(mixed_texts), reference, strict=True):
        np.testing.assert_allclose(a.dense, b.dense, atol=1e-5)
    assert seen[0] == len(set(mixed_texts)) and max(seen[1:]) <= 4  # duplicates run once

    monkeypatch.setattr(victim, "forward", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")))
    with pytest.raises(EncoderOutOfMemoryError):
        victim.encode(["one"])


def test_other_runtime_errors_are_not_treated_as_oom(encoder_config, monkeypatch):
    victim = Encoder(encoder_config)  # its own: its forward pass is replaced
    monkeypatch.setattr(victim, "forward", lambda *a: (_ for _ in ()).throw(RuntimeError("shape bug")))
    with pytest.raises(RuntimeError, match="shape bug"):
        victim.encode(["a", "b"])


def test_repeated_texts_run_once_and_get_their_own_objects(config_128, encoder, mixed_texts, monkeypatch):
    victim = Encoder(config_128)  # its own: its forward pass is replaced
    real_forward, rows = victim.forward, []
    monkeypatch.setattr(victim, "forward", lambda batch: rows.append(batch.input_ids.shape[0]) or real_forward(batch))
    texts = mixed_texts * 3
    out = victim.encode(texts, colbert=True)
    assert sum(rows) == len(set(mixed_texts))
    assert len({id(e) for e in out}) == len(texts)  # callers may trim fields of one without touching another
    for got, exp in zip(out, encoder.encode(texts, colbert=True), strict=True):
        np.testing.assert_allclose(got.dense, exp.dense, atol=1e-5)
        np.testing.assert_allclose(got.colbert, exp.colbert, atol=1e-5)


def test_chunked_overflow_merges_windows(encoder, hf_tokenizer):
    long_text = " ".join(f"word{i % 50} river" for i in range(200))
    windows = encoder.tokenizer.windows([long_text, "short text"])
    assert len(windows[1]) == 1 and windows[1][0].ids == encoder.tokenize(["short text"])[0].ids
    assert len(windows[0]) > 1 and all(w.n_tokens <= MAX_LENGTH for w in windows[0])
    full = encoder.tokenize([long_text], truncate=True)[0]
    assert sum(w.n_tokens - 2 for w in windows[0]) == full.n_tokens_full - 2  # every content token, once
    parts = encoder.encode(windows[0], colbert=True, sparse_tokens=True)
    merged = encoder.encode([long_text], colbert=True, sparse_tokens=True, overflow="chunk")[0]
    mean = np.mean([p.dense for p in parts], axis=0)
    np.testing.assert_allclose(merged.dense, mean / np.linalg.norm(mean), atol=1e-5)
    best: dict[int, float] = {}
    for p in parts:
        for i, w in p.lexical_weights().items():
            best[i] = max(best.get(i, 0.0), w)
    assert merged.lexical_weights() == pytest.approx(best)
    assert merged.sparse_tokens == [hf_tokenizer.decode([i]) for i in merged.sparse_indices]
    np.testing.assert_allclose(merged.colbert, np.concatenate([p.colbert for p in parts]), atol=1e-6)
    assert merged.n_tokens == sum(p.n_tokens for p in parts) and not merged.truncated
    short = encoder.encode(["short text"], overflow="chunk")[0]
    np.testing.assert_allclose(short.dense, encoder.encode(["short text"])[0].dense, atol=1e-6)


def test_token_details_and_decode(encoder, hf_tokenizer):
    tokens = encoder.tokenizer.details(["hello 東京"])[0]
    assert tokens == tei_tokens(hf_tokenizer, "hello 東京")  # as the checkpoint's own tokenizer (transformers)
    assert tokens[0]["special"] and tokens[-1]["special"] and tokens[0]["start"] is None
    assert [t["id"] for t in tokens] == encoder.tokenize(["hello 東京"])[0].ids
    assert all(t["start"] <= t["stop"] for t in tokens[1:-1])
    ids = [t["id"] for t in tokens]
    assert [t["id"] for t in encoder.tokenizer.details(["hello 東京"], add_special_tokens=False)[0]] == ids[1:-1]
    assert encoder.tokenizer.decode([ids]) == [hf_tokenizer.decode(ids, skip_special_tokens=True)]
    assert encoder.tokenizer.decode([ids], skip_special_tokens=False)[0].startswith("<s>")
    with pytest.raises(InvalidTokenIdError):
        encoder.tokenizer.decode([[0, 10**9]])


def test_tokenize_many_equals_one_call_per_request_and_keeps_each_failure_to_its_request(encoder):
    long_text = " ".join(f"word{i % 50} river" for i in range(200))
    cut, strict, chunk = EncodeOptions(), EncodeOptions(truncate=False), EncodeOptions(overflow="chunk")
    requests = [(["first text", "東京 second"], cut), (["fits", long_text], strict), ([long_text, "x"], cut),
                (["fine", "bad \ud800"], cut), ([long_text], chunk), (["last"], strict)]
    got = encoder.tokenize_many(requests)
    for i in (0, 2, 4, 5):
        assert got[i] == encoder.tokenize_for(*requests[i])
    assert isinstance(got[1], InputTooLongError) and got[1].index == 1
    assert isinstance(got[3], InvalidTextError) and got[3].index == 1


def test_missing_heads_refuse_to_load(tiny_model_dir, tmp_path):
    broken = tmp_path / "no-heads"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "sparse_linear.pt").unlink()
    with pytest.raises(MissingHeadsError, match="sparse_linear.pt"):
        Encoder(EncoderConfig(model=str(broken), device="cpu"))


def test_bad_paths_fail_clearly(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Encoder(EncoderConfig(model=str(tmp_path / "nowhere" / "model"), device="cpu"))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="could not load"):
        Encoder(EncoderConfig(model=str(corrupt), device="cpu"))


def test_config_validates():
    with pytest.raises(ValueError):
        EncoderConfig(device="tpu")
    with pytest.raises(ValueError):
        EncoderConfig(dtype="int4")
    assert EncoderConfig().model == "BAAI/bge-m3" and EncoderConfig().max_length == 8192


def test_max_length_without_room_for_text_is_refused_at_config_time(encoder_config):
    """<s> and </s> take two tokens: max_length=2 leaves no window step for overflow="chunk"."""
    with pytest.raises(ValueError, match=r"max_length must be at least 3") as info:
        EncoderConfig(max_length=2)
    assert "<s>" in str(info.value) and "</s>" in str(info.value)
    with pytest.raises(ValueError, match=r"encoder\.max_length"):  # what `serve run` reports for the YAML
        AppArgs.model_validate({"encoder": {"max_length": 2}})
    smallest = Encoder(encoder_config.model_copy(update={"max_length": 3}))
    text = "rivers and mountains near the library"
    content = smallest.tokenize([text])[0].n_tokens_full - 2
    merged = smallest.encode([text], colbert=True, overflow="chunk")[0]
    assert merged.n_tokens == 3 * content and merged.colbert.shape[0] == 2 * content  # one token per window


def test_caching_encoder_answers_hits_and_names_a_miss_by_its_place(config_128, encoder, mixed_texts):
    # its own encoder: its forward pass is replaced
    cached = CachingEncoder(Encoder(config_128), CacheConfig(backend="memory"))
    options = EncodeOptions(dense=True, sparse=True, truncate=False)
    cached.encode(mixed_texts[:2], options)
    runs = []
    real_forward = cached.encoder.forward
    cached.encoder.forward = lambda batch: runs.append(batch.input_ids.shape[0]) or real_forward(batch)
    out = cached.encode([mixed_texts[0], "a new text", mixed_texts[1]], options)
    assert runs == [1]  # only the miss ran
    for got, exp in zip(out, encoder.encode([mixed_texts[0], "a new text", mixed_texts[1]]), strict=True):
        np.testing.assert_allclose(got.dense, exp.dense, atol=1e-5)
        assert got.lexical_weights() == pytest.approx(exp.lexical_weights())
    too_long = " ".join(["river"] * (MAX_LENGTH * 2))
    with pytest.raises(InputTooLongError) as refused:
        cached.encode([mixed_texts[0], too_long], options)  # texts[1] is the only miss: named as texts[1]
    assert refused.value.index == 1


def test_forward_cpu_counts_the_forward_passes_only_and_grows_with_each(encoder, mixed_texts):
    """`forward_cpu_s` is what the CPU benchmarks take out of a model replica's CPU (a GPU does that work): the
    forward passes' CPU, part of the thread's, and more for each encode."""
    import time

    forward_before, thread_before = encoder.forward_cpu_s, time.thread_time()
    encoder.encode(mixed_texts, colbert=True)
    spent_forward, spent_thread = encoder.forward_cpu_s - forward_before, time.thread_time() - thread_before
    assert 0 < spent_forward < spent_thread  # tokenizing, padding and the heads are outside it
    encoder.encode(mixed_texts[:1])
    assert encoder.forward_cpu_s > forward_before + spent_forward
