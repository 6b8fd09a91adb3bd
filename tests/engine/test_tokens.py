"""How the text encoders read a prompt (model/engine/tokens.py), on the real CLIP tokenizers: each
mention's token positions, one window exactly as diffusers tokenizes it, longer prompts in windows."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from model.contract.prompt import parse_prompt
from model.engine.tokens import mention_positions, window_ids
from model.engine.weights import SDXL_BASE


@pytest.fixture(scope="module")
def tokenizers(tiny_weights: Path) -> list[CLIPTokenizer]:
    base = tiny_weights / SDXL_BASE.folder
    return [CLIPTokenizer.from_pretrained(base / f, model_max_length=77) for f in ("tokenizer", "tokenizer_2")]


POSITIONS = [
    ("a portrait of @woman and @man in @park", {"woman": ["woman</w>"], "man": ["man</w>"], "park": ["park</w>"]}),
    ("@woman's sweater, @woman's bangles", {"woman": ["woman</w>", "woman</w>"]}),
    ("@catdog2 runs.", {"catdog2": ["cat", "dog</w>", "2</w>"]}),
    ("(@Bob), @Bob!", {"Bob": ["bob</w>", "bob</w>"]}),
    ("word " * 70 + "@edge then more words after it", {"edge": ["edge</w>"]}),
    ("word " * 80 + "@late", {"late": ["late</w>"]}),  # in the second 77-token window
    ("word " * 74 + "@catdog2 astride", {"catdog2": ["cat", "dog</w>", "2</w>"]}),  # across two windows
    ("@early " + "word " * 299 + "@late", {"early": ["early</w>"]}),  # past 300 tokens: never read
]


@pytest.mark.parametrize(("prompt", "expected"), POSITIONS, ids=range(len(POSITIONS)))
def test_mention_token_positions_on_the_real_clip_tokenizer(tokenizers: list, prompt: str, expected: dict) -> None:
    parsed = parse_prompt(prompt)
    found = [mention_positions(parsed, t) for t in tokenizers]
    assert found[0] == found[1]  # both SDXL tokenizers agree
    ids = [i for window in window_ids(tokenizers[0], parsed.text) for i in window]  # what the encoder reads
    tokens = {tag: [tokenizers[0].convert_ids_to_tokens(ids[p]) for p in pos] for tag, pos in found[0].items()}
    assert tokens == expected


@pytest.mark.parametrize("prompt", ["a heron at first light", "(@Bob), @Bob!", "word " * 75, ""])
def test_a_prompt_of_one_window_is_tokenized_as_diffusers_does(tokenizers: list, prompt: str) -> None:
    for tokenizer in tokenizers:
        diffusers = tokenizer(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert window_ids(tokenizer, prompt) == [diffusers]


def test_a_full_window_ends_at_the_last_phrase_break_of_its_final_20_tokens(tokenizers: list) -> None:
    phrase = "a woman in a pink sweater, "  # 7 tokens
    for tokenizer in tokenizers:
        phrase_ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
        windows = window_ids(tokenizer, phrase * 12)  # 84 tokens: 10 phrases (70), then 2 (14)
        assert windows[0][1:72] == phrase_ids * 10 + [tokenizer.eos_token_id]
        assert windows[1][1:16] == phrase_ids * 2 + [tokenizer.eos_token_id]
        # No break in the last 20 tokens: the window is cut at 75.
        early_comma = "word " * 50 + ", " + "word " * 40  # the comma is token 51, 25 before the end
        assert (
            window_ids(tokenizer, early_comma)[0][1:76]
            == tokenizer(early_comma, add_special_tokens=False)["input_ids"][:75]
        )
    # The words after the break move with their phrase: "man" is window 2's third text token.
    parsed = parse_prompt(phrase * 10 + "and then @man waves slowly toward the camera")  # 78 tokens
    assert mention_positions(parsed, tokenizers[0]) == {"man": (77 + 1 + 2,)}


def test_a_long_prompt_is_read_in_windows_of_77_up_to_300_tokens(tokenizers: list) -> None:
    for tokenizer in tokenizers:
        start, end, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        text = " ".join(f"w{i}" for i in range(160))  # "w12" is two tokens: 320 in all
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows = window_ids(tokenizer, text)
        assert [len(w) for w in windows] == [77] * 4
        assert [w[1:76] for w in windows] == [ids[i : i + 75] for i in range(0, 300, 75)]
        assert all(w[0] == start and w[76] == end for w in windows)
        short = window_ids(tokenizer, "word " * 80)  # 80 tokens: 75, then 5 and the end token
        assert short[1][:7] == [start] + tokenizer("word " * 5, add_special_tokens=False)["input_ids"] + [end]
        assert short[1][7:] == [pad] * 70
