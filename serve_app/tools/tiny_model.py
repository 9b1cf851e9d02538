"""Build a BGE-M3-shaped checkpoint offline: random XLM-RoBERTa weights, a locally trained tokenizer,
and the `colbert_linear.pt` / `sparse_linear.pt` heads, laid out exactly like `BAAI/bge-m3`.

The model hub is unreachable in CI, so tests and benchmarks load this directory through the very code
path that loads the real model. `--full-size` writes the real architecture (hidden 1024, 24 layers,
vocab 250002, 8194 positions) with random weights: the same compute as BGE-M3, for benchmarks.

    python -m serve_app.tools.tiny_model OUT_DIR [--hidden 64 --layers 2 | --full-size] [--layout bin]

`--layout` picks the weights file: `safetensors` (`model.safetensors`, the default) or `bin`
(`pytorch_model.bin`, a PyTorch pickle, as `BAAI/bge-m3` ships it); fp32 either way, as the hub's.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LAYOUTS = ("safetensors", "bin")  # the weights file: model.safetensors or pytorch_model.bin
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in XLM-R; <mask> is the last id
FULL_SIZE = {"hidden": 1024, "layers": 24, "heads": 16, "intermediate": 4096, "vocab_size": 250002}

_EN_WORDS = ["the", "search", "engine", "returns", "relevant", "passages", "for", "each", "query", "about", "rivers", "mountains", "cities", "history", "science", "music", "language", "model", "vector", "dense", "sparse", "lexical", "retrieval", "ranking", "cat", "dog", "weather", "morning", "evening", "train", "station", "library", "museum", "coffee", "water", "energy", "solar", "network", "computer", "memory", "graph", "database", "index", "embedding", "token", "sentence", "paragraph", "document", "summary"]
_JA_WORDS = ["東京", "大阪", "京都", "検索", "文書", "言語", "モデル", "情報", "日本語", "英語", "猫", "犬", "天気", "朝", "夜", "駅", "図書館", "博物館", "珈琲", "水", "電気", "太陽", "網", "計算機", "記憶", "索引", "文章", "段落", "要約", "です", "ます", "した", "こと", "もの", "これ", "それ", "あれ", "の", "に", "は", "を", "が", "で", "と", "から", "まで", "ありがとう", "こんにちは", "さようなら", "美しい", "新しい", "大きい"]


def generate_corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    """Seeded English, Japanese and mixed sentences for training the tokenizer."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        kind = i % 3
        n = rng.randint(4, 24)
        if kind == 0:
            lines.append(" ".join(rng.choice(_EN_WORDS) for _ in range(n)).capitalize() + ".")
        elif kind == 1:
            lines.append("".join(rng.choice(_JA_WORDS) for _ in range(n)) + "。")
        else:
            lines.append(" ".join(rng.choice(_EN_WORDS + _JA_WORDS) for _ in range(n)))
    return lines


def _canonical_unigram(tok):
    """Rebuild the trained unigram model with rounded scores in a fixed order.

    The trainer walks Rust hash maps, so ties and the last float digits vary from run to run;
    rounding and sorting makes the same seed give a byte-identical tokenizer.
    """
    from tokenizers import models

    vocab = json.loads(tok.to_str())["model"]["vocab"]
    specials, pieces = vocab[: len(SPECIAL_TOKENS)], vocab[len(SPECIAL_TOKENS):]
    # The trainer appends rare single characters with near-equal, run-dependent scores: pin them to one.
    floor = round(min(score for piece, score in pieces if len(piece) > 1) - 1.0, 1)
    pieces = [(piece, floor if len(piece) == 1 and score < floor + 1.0 else round(score, 4))
              for piece, score in pieces]
    pieces.sort(key=lambda p: (-p[1], p[0]))
    return models.Unigram([tuple(p) for p in specials] + pieces, unk_id=SPECIAL_TOKENS.index("<unk>"),
                          byte_fallback=False)


def build_tokenizer(vocab_size: int = 2000, seed: int = 0):
    """Train an XLM-R style (SentencePiece unigram, metaspace) fast tokenizer on generated text."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(generate_corpus(seed=seed), trainer=trainer)
    tok.model = _canonical_unigram(tok)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=8192,
    )


def build_checkpoint(
    out_dir: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    vocab_size: int | None = None,
    max_positions: int = 8194,
    seed: int = 0,
    layout: str = "safetensors",
) -> Path:
    """Write a complete BGE-M3-shaped checkpoint directory and return its path; `layout` is one of `LAYOUTS`
    (the same seed gives the same weights in either)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(seed=seed)
    tokenizer.save_pretrained(out)
    config = XLMRobertaConfig(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_positions,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        architectures=["XLMRobertaModel"],
    )
    model = XLMRobertaModel(config).eval()
    model.save_pretrained(out, safe_serialization=layout == "safetensors")
    # Upstream heads: colbert maps hidden -> hidden, sparse maps hidden -> one weight per token.
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), out / "colbert_linear.pt")
    torch.save(torch.nn.Linear(hidden, 1).state_dict(), out / "sparse_linear.pt")
    (out / "bge_m3_ray_checkpoint.json").write_text(
        json.dumps({"kind": "random-weights", "hidden": hidden, "layers": layers, "seed": seed, "layout": layout})
        + "\n"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: build a checkpoint into OUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-size", action="store_true", help="real BGE-M3 architecture, random weights")
    parser.add_argument("--layout", choices=LAYOUTS, default="safetensors", help="the weights file's format")
    args = parser.parse_args(argv)
    if args.full_size:
        path = build_checkpoint(
            args.out_dir, hidden=FULL_SIZE["hidden"], layers=FULL_SIZE["layers"], heads=FULL_SIZE["heads"],
            intermediate=FULL_SIZE["intermediate"], vocab_size=FULL_SIZE["vocab_size"], seed=args.seed,
            layout=args.layout,
        )
    else:
        path = build_checkpoint(args.out_dir, hidden=args.hidden, layers=args.layers, heads=args.heads,
                                seed=args.seed, layout=args.layout)
    print(f"wrote checkpoint to {path}")


if __name__ == "__main__":
    main()
