"""Where the prompt's tokens, and each @mention's, land in the text encoders' input.

CLIP reads windows of 77 tokens: a start token, up to 75 of text, an end token, then padding. A
longer prompt is read in consecutive windows whose outputs are concatenated along the sequence (as
AUTOMATIC1111 and compel read long prompts), at most MAX_PROMPT_WINDOWS of them. A window that
would cut the text mid-phrase ends after the last comma or full stop among its final
BREAK_LOOKBACK tokens instead, and the rest goes to the next window (AUTOMATIC1111's comma
padding): each window is encoded on its own, so a phrase kept whole keeps its words together. A
prompt of at most 75 tokens is one window, exactly what diffusers' encode_prompt gives the encoders.

A mention always sits on a pre-token boundary (it starts after a non-word character and ends
before one), so the number of tokens of the text before it is the index of its first token, and
the number of tokens of the text up to its end is one past its last. Pure: no torch.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from model.contract.prompt import ParsedPrompt
from model.contract.tables import MAX_PROMPT_WINDOWS

# How far back from a full window's end to look for a phrase break (AUTOMATIC1111's default).
BREAK_LOOKBACK = 20
BREAK_TEXTS = (",", ".", ";")


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


def split_windows(
    ids: Sequence[int], span: int, breaks: Collection[int], max_windows: int = MAX_PROMPT_WINDOWS
) -> list[tuple[int, int]]:
    """[start, stop) of the text tokens each window reads (at least one window, maybe empty)."""
    windows: list[tuple[int, int]] = []
    start = 0
    while start < len(ids) and len(windows) < max_windows:
        stop = min(start + span, len(ids))
        if stop < len(ids):  # a full window with text after it: end at a phrase break if one is near
            stop = next((cut for cut in range(stop, stop - BREAK_LOOKBACK, -1) if ids[cut - 1] in breaks), stop)
        windows.append((start, stop))
        start = stop
    return windows or [(0, 0)]


@dataclass(frozen=True)
class Layout:
    """A text's tokens as the encoder reads them: `ids` (the whole text's) cut into `windows`."""

    ids: tuple[int, ...]
    windows: tuple[tuple[int, int], ...]
    span: int  # text tokens a window holds at most

    @property
    def read(self) -> int:
        """How many of the text's tokens the encoder reads (the rest is past the last window)."""
        return self.windows[-1][1]

    def position(self, token: int) -> int | None:
        """Sequence position of text token `token` in the concatenated windows, or None if unread."""
        for w, (start, stop) in enumerate(self.windows):
            if start <= token < stop:
                return w * (self.span + 2) + 1 + token - start
        return None

    def rows(self, tokenizer: Tokenizer) -> list[list[int]]:
        """One full-length row of ids per window: start token, text, end token, padding."""
        return [
            [tokenizer.bos_token_id, *self.ids[start:stop], tokenizer.eos_token_id]
            + [tokenizer.pad_token_id] * (self.span - (stop - start))
            for start, stop in self.windows
        ]


def layout(tokenizer: Tokenizer, text: str) -> Layout:
    """How `tokenizer`'s encoder reads `text`."""
    span = tokenizer.model_max_length - 2  # room for the start and end tokens
    breaks = {i for mark in BREAK_TEXTS for i in text_ids(tokenizer, mark)}
    ids = text_ids(tokenizer, text)
    return Layout(ids=tuple(ids), windows=tuple(split_windows(ids, span, breaks)), span=span)


def window_ids(tokenizer: Tokenizer, text: str) -> list[list[int]]:
    """The ids the encoder reads, one full-length row per window."""
    return layout(tokenizer, text).rows(tokenizer)


def mention_positions(
    parsed: ParsedPrompt, tokenizer: Tokenizer, read: Layout | None = None
) -> dict[str, tuple[int, ...]]:
    """For each mentioned tag, the sequence positions of all its mentions' tokens; tokens past
    what the encoders read (`read`: the text's layout, computed here if not given) are dropped, as
    the encoders never see them."""
    read = read or layout(tokenizer, parsed.text)
    positions: dict[str, list[int]] = {}
    for mention in parsed.mentions:
        first = len(text_ids(tokenizer, parsed.text[: mention.start]))
        stop = len(text_ids(tokenizer, parsed.text[: mention.end]))
        found = (read.position(t) for t in range(first, stop))
        positions.setdefault(mention.tag, []).extend(p for p in found if p is not None)
    return {tag: tuple(p) for tag, p in positions.items() if p}


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as SDXL's text encoders read it: its layout and each mention's positions, computed
    once per request. Both SDXL tokenizers share CLIP's vocabulary and window length and differ
    only in padding, so one layout serves both (each adds its own start, end and pad ids)."""

    layout: Layout
    positions: dict[str, tuple[int, ...]]

    @property
    def unread(self) -> int:
        """Tokens past the last window, which the encoders do not read."""
        return len(self.layout.ids) - self.layout.read


def read_prompt(parsed: ParsedPrompt, tokenizer: Tokenizer) -> PromptTokens:
    """How the text encoders read `parsed`: its layout and its mentions' positions."""
    read = layout(tokenizer, parsed.text)
    return PromptTokens(layout=read, positions=mention_positions(parsed, tokenizer, read))
