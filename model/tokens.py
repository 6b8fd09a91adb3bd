"""Where each @mention lands in a CLIP tokenizer's 77-token window.

A mention always sits on a pre-token boundary (it starts after a non-word character and ends
before one), so the number of tokens of the text before it is its first position, and the number
of tokens of the text up to its end is one past its last. Position 0 is the start token.
"""

from __future__ import annotations

from typing import Protocol

from model.prompt import ParsedPrompt


class Tokenizer(Protocol):
    model_max_length: int

    def __call__(self, text: str, add_special_tokens: bool = ...) -> dict: ...


def _count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def mention_positions(parsed: ParsedPrompt, tokenizer: Tokenizer) -> dict[str, tuple[int, ...]]:
    """For each mentioned tag, the token positions of all its mentions inside the encoder's
    window (start token at 0, last usable position before the end token); mentions past the
    window are dropped, as the encoder never sees them."""
    last = tokenizer.model_max_length - 2  # room for the start and end tokens
    positions: dict[str, list[int]] = {}
    for mention in parsed.mentions:
        first = 1 + _count(tokenizer, parsed.text[: mention.start])
        stop = 1 + _count(tokenizer, parsed.text[: mention.end])
        inside = [p for p in range(first, stop) if p <= last]
        positions.setdefault(mention.tag, []).extend(inside)
    return {tag: tuple(p) for tag, p in positions.items() if p}
