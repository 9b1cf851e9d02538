"""A fixed, seeded benchmark workload with a realistic length mix, English and Japanese.

Mix by count: 60% short queries (8-32 tokens), 35% passages (128-512 tokens), 5% long texts
(1024-2048 tokens). Lengths are drawn in tokens of the model's own tokenizer, so the mix holds for
the small checkpoint and the full-size one alike.
"""

from __future__ import annotations

import random

from serve_app.tools.tiny_model import _EN_WORDS, _JA_WORDS

MIX = (("query", 0.60, 8, 32), ("passage", 0.35, 128, 512), ("long", 0.05, 1024, 2048))


def _text(rng: random.Random, tokenizer, lo: int, hi: int) -> str:
    target = rng.randint(lo, hi)
    japanese = rng.random() < 0.4
    words: list[str] = []
    text = ""
    while True:
        words.append(rng.choice(_JA_WORDS if japanese else _EN_WORDS))
        text = ("" if japanese else " ").join(words)
        if len(words) % 8 == 0 or len(words) > target:
            n = len(tokenizer(text)["input_ids"])
            if n >= target:
                return text


def make_workload(n: int, tokenizer, seed: int = 0, mix=MIX) -> list[str]:
    """`n` texts in a seeded order; `mix` is (kind, share, min_tokens, max_tokens) rows."""
    rng = random.Random(seed)
    kinds = rng.choices(mix, weights=[m[1] for m in mix], k=n)
    return [_text(rng, tokenizer, lo, hi) for _, _, lo, hi in kinds]


SHORT_MIX = (("query", 0.70, 8, 32), ("passage", 0.30, 128, 256))  # full-size model runs on 2 cores


def short_queries(n: int, tokenizer, seed: int = 0) -> list[str]:
    """Only short queries (8-32 tokens): the overhead-dominated case."""
    return make_workload(n, tokenizer, seed, mix=(("query", 1.0, 8, 32),))
