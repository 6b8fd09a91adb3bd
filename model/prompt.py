"""@tag mentions: find them in the prompt and rewrite the prompt into the text the encoders see.

"@woman" becomes "woman" in the encoders' text, so the tag's own word carries its meaning, and
the character span of every mention in that text is kept so that later stages can find the
mention's tokens. Pure: no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A mention is "@" + a letter + letters/digits, not preceded by a character that makes it part of
# a word or an e-mail address ("a@b.com" is not a mention of "b").
MENTION_RE = re.compile(r"(?<![A-Za-z0-9._%+\-@])@([A-Za-z][A-Za-z0-9]*)")


@dataclass(frozen=True)
class Mention:
    """One @tag in the prompt; `start`/`end` index the rewritten text (the tag's word)."""

    tag: str
    start: int
    end: int


@dataclass(frozen=True)
class ParsedPrompt:
    """The prompt as the user wrote it, the text the encoders see, and where each mention is."""

    original: str
    text: str
    mentions: tuple[Mention, ...]

    def mentioned_tags(self) -> tuple[str, ...]:
        """Distinct mentioned tags in order of first mention."""
        return tuple(dict.fromkeys(m.tag for m in self.mentions))


def find_mentions(prompt: str) -> list[str]:
    """Tags mentioned in the prompt, in order, with repeats."""
    return [m.group(1) for m in MENTION_RE.finditer(prompt)]


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Strip the "@" of every mention and record each mention's span in the stripped text."""
    pieces: list[str] = []
    mentions: list[Mention] = []
    cursor = 0
    length = 0
    for match in MENTION_RE.finditer(prompt):
        before = prompt[cursor : match.start()]
        pieces.append(before)
        length += len(before)
        tag = match.group(1)
        mentions.append(Mention(tag=tag, start=length, end=length + len(tag)))
        pieces.append(tag)
        length += len(tag)
        cursor = match.end()
    pieces.append(prompt[cursor:])
    return ParsedPrompt(original=prompt, text="".join(pieces), mentions=tuple(mentions))
