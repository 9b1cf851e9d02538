"""What an independent reference answers: the checkpoint's tokenizer as `transformers.AutoTokenizer` loads it
(conftest's `hf_tokenizer`), never this project's tokenizer wrapper, which `/tokenize` and `/decode` serve.
"""

from __future__ import annotations


def tei_tokens(tokenizer, text: str, add_special_tokens: bool = True) -> list[dict]:
    """`text`'s tokens in the shape of TEI's `/tokenize`: the id, the token's string, whether the tokenizer
    added it as a special token (its special-tokens mask: `<s>`, `</s>`; a `<unk>` standing for a piece of
    the text is not one), and its character span in `text` (none for a special token)."""
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                         return_special_tokens_mask=True)
    return [{"id": token_id, "text": token, "special": bool(special),
             "start": None if special else start, "stop": None if special else stop}
            for token_id, token, special, (start, stop) in zip(
                encoding["input_ids"], encoding.tokens(), encoding["special_tokens_mask"], encoding["offset_mapping"],
                strict=True)]
