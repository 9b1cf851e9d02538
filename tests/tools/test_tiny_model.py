"""The offline checkpoint builder writes a directory laid out like BAAI/bge-m3."""

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from serve_app.tools.tiny_model import build_checkpoint


def test_layout_matches_bge_m3(tiny_model_dir):
    files = {p.name for p in Path(tiny_model_dir).iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "colbert_linear.pt", "sparse_linear.pt"} <= files
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta" and config["max_position_embeddings"] == 8194
    assert config["architectures"] == ["XLMRobertaModel"]


def test_tokenizer_is_xlmr_style(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.mask_token == "<mask>" and tok.mask_token_id == len(tok) - 1
    ids = tok("東京の天気")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) > 2
    assert tok("")["input_ids"] == [0, 2]


def test_build_is_deterministic(tmp_path, tiny_model_dir):
    again = build_checkpoint(tmp_path / "again", hidden=64, layers=2)
    for name in ("colbert_linear.pt", "sparse_linear.pt"):
        a, b = torch.load(Path(tiny_model_dir) / name), torch.load(again / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (again / "tokenizer.json").read_text() == (Path(tiny_model_dir) / "tokenizer.json").read_text()
