"""A fixed, seeded benchmark workload with a realistic length mix, English and Japanese.

Mix by count: 60% short queries (8-32 tokens), 35% passages (128-512 tokens), 5% long texts
(1024-2048 tokens). Lengths are drawn in tokens of the model's own tokenizer, so the mix holds for
the small checkpoint and the full-size one alike.

Generation is linear in the tokens produced: words are drawn against an estimate of the tokens so far
(each word's own token count, then the measured tokens per word), and the whole text is tokenized only
to confirm it reached its target, a few times per text, never once per few words.
"""

from __future__ import annotations

import math
import random

from serve_app.tools.tiny_model import _EN_WORDS, _JA_WORDS

MIX = (("query", 0.60, 8, 32), ("passage", 0.35, 128, 512), ("long", 0.05, 1024, 2048))


class _Counter:
    """Token counts of texts and (cached) of single words, with the model's tokenizer."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._words: dict[str, int] = {}

    def text(self, text: str) -> int:
        """Tokens of `text`, special tokens included (what the service counts)."""
        return len(self._tokenizer(text)["input_ids"])

    def word(self, word: str) -> int:
        """Tokens of `word` on its own, without special tokens: a first estimate of what it adds."""
        if word not in self._words:
            self._words[word] = max(1, len(self._tokenizer(word, add_special_tokens=False)["input_ids"]))
        return self._words[word]


def _text(rng: random.Random, count: _Counter, lo: int, hi: int) -> str:
    """Words drawn from `rng` until the text has at least a target number of tokens in [lo, hi]."""
    target = rng.randint(lo, hi)
    japanese = rng.random() < 0.4
    vocabulary, separator = (_JA_WORDS, "") if japanese else (_EN_WORDS, " ")
    words: list[str] = []
    tokens = count.text("")  # the special tokens alone
    while tokens < target:
        # Measured tokens per word once there are words (Japanese words merge when concatenated).
        per_word = (tokens - count.text("")) / len(words) if words else None
        if per_word:
            for _ in range(max(1, math.ceil((target - tokens) / per_word))):
                words.append(rng.choice(vocabulary))
        else:
            estimate = tokens
            while estimate < target:
                words.append(rng.choice(vocabulary))
                estimate += count.word(words[-1])
        tokens = count.text(separator.join(words))
    return separator.join(words)


def make_workload(n: int, tokenizer, seed: int = 0, mix=MIX) -> list[str]:
    """`n` texts in a seeded order; `mix` is (kind, share, min_tokens, max_tokens) rows."""
    rng = random.Random(seed)
    count = _Counter(tokenizer)
    kinds = rng.choices(mix, weights=[m[1] for m in mix], k=n)
    return [_text(rng, count, lo, hi) for _, _, lo, hi in kinds]


SHORT_MIX = (("query", 0.70, 8, 32), ("passage", 0.30, 128, 256))  # full-size model runs on 2 cores


def short_queries(n: int, tokenizer, seed: int = 0) -> list[str]:
    """Only short queries (8-32 tokens): the overhead-dominated case."""
    return make_workload(n, tokenizer, seed, mix=(("query", 1.0, 8, 32),))


OFFLINE_MIX = ((0.70, 5, 20), (0.30, 80, 250))  # (share, min words, max words): short texts and passages
_SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]


def offline_corpus(n: int, seed: int = 1, made_up: float = 0.4, japanese: float = 0.2) -> list[str]:
    """`n` texts for the offline benchmark, generated in seconds for 300k (numpy, no tokenizer).

    70% short texts of 5-20 words, 30% passages of 80-250 words. English texts mix the tiny tokenizer's
    words with made-up words (`made_up` of them: names, codes and typos, which real corpora are full of)
    that it splits into several tokens, ~3 tokens per word overall; `japanese` of the texts are
    Japanese words run together.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    pseudo = ["".join(rng.choice(_SYLLABLES, k)) for k in rng.integers(2, 5, 20_000)]
    english = np.array(_EN_WORDS + pseudo, dtype=object)
    short = rng.random(n) < OFFLINE_MIX[0][0]
    (_, s_lo, s_hi), (_, p_lo, p_hi) = OFFLINE_MIX
    counts = np.where(short, rng.integers(s_lo, s_hi + 1, n), rng.integers(p_lo, p_hi + 1, n))
    is_japanese = rng.random(n) < japanese
    total = int(counts.sum())
    en_words = english[np.where(rng.random(total) < made_up, rng.integers(len(_EN_WORDS), len(english), total),
                                rng.integers(0, len(_EN_WORDS), total))]
    ja_words = np.array(_JA_WORDS, dtype=object)[rng.integers(0, len(_JA_WORDS), total)]
    ends = np.cumsum(counts)
    return ["".join(ja_words[e - c:e]) if ja else " ".join(en_words[e - c:e])
            for c, e, ja in zip(counts.tolist(), ends.tolist(), is_japanese.tolist())]
