"""Where the prompt's tokens, and each @mention's, land in the text encoders' input.

CLIP reads windows of 77 tokens: a start token, 75 of text, an end token, then padding. A longer
prompt is read in consecutive windows whose outputs are concatenated along the sequence (as
AUTOMATIC1111 and compel read long prompts), at most MAX_PROMPT_WINDOWS of them, so that text
token t sits at position 77 * (t // 75) + 1 + t % 75. A prompt of at most 75 tokens is one
window, exactly what diffusers' encode_prompt gives the encoders.

A mention always sits on a pre-token boundary (it starts after a non-word character and ends
before one), so the number of tokens of the text before it is the index of its first token, and
the number of tokens of the text up to its end is one past its last. Pure: no torch.
"""

from __future__ import annotations

from typing import Protocol

from model.prompt import ParsedPrompt
from model.tables import MAX_PROMPT_WINDOWS


class Tokenizer(Protocol):
    model_max_length: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def __call__(self, text: str, add_special_tokens: bool = ..., verbose: bool = ...) -> dict: ...


def text_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The text's token ids, without start and end tokens and uncut (the length warning is for
    callers that truncate; these ids are cut into windows)."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def window_span(tokenizer: Tokenizer) -> int:
    """Text tokens per window: the window less its start and end tokens."""
    return tokenizer.model_max_length - 2


def readable_tokens(tokenizer: Tokenizer) -> int:
    """How many text tokens the encoders read at most."""
    return window_span(tokenizer) * MAX_PROMPT_WINDOWS


def window_ids(tokenizer: Tokenizer, text: str) -> list[list[int]]:
    """The ids the encoder reads, one full-length row per window (at least one): start token, up
    to `window_span` text tokens, end token, the tokenizer's padding."""
    span = window_span(tokenizer)
    ids = text_ids(tokenizer, text)[: readable_tokens(tokenizer)]
    chunks = [ids[i : i + span] for i in range(0, len(ids), span)] or [[]]
    return [
        [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (span - len(chunk))
        for chunk in chunks
    ]


def position(token: int, span: int) -> int:
    """Sequence position of text token `token` in the concatenated windows."""
    window, offset = divmod(token, span)
    return window * (span + 2) + 1 + offset


def mention_positions(parsed: ParsedPrompt, tokenizer: Tokenizer) -> dict[str, tuple[int, ...]]:
    """For each mentioned tag, the sequence positions of all its mentions' tokens; tokens past
    what the encoders read are dropped, as the encoders never see them."""
    span, limit = window_span(tokenizer), readable_tokens(tokenizer)
    positions: dict[str, list[int]] = {}
    for mention in parsed.mentions:
        first = len(text_ids(tokenizer, parsed.text[: mention.start]))
        stop = len(text_ids(tokenizer, parsed.text[: mention.end]))
        positions.setdefault(mention.tag, []).extend(position(t, span) for t in range(first, min(stop, limit)))
    return {tag: tuple(p) for tag, p in positions.items() if p}
