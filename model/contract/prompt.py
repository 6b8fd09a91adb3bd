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

# Words that, before a mention, make it a candidate for the place rather than a subject
# ("standing in @park"): words of being inside or amid something. Whether the candidate is the
# backdrop or something a subject wears or holds ("@woman in @dress") is decided from the attention
# maps (model/engine/placement/masks.py). Left out on purpose, so that the mention stays a subject:
# - words that relate two things rather than set a scene: "on", "under", "near", "over",
#   "beneath", "below" ("@cat on @sofa", "@dog under @table", "@woman near @car": the object gets
#   its own region, never the background);
# - words as often said of people: "next to @man", "behind @woman", "beside", "by", "above",
#   "around" ("arms around @man").
PLACE_WORDS = (
    "in",
    "at",
    "inside",
    "into",
    "through",
    "across",
    "within",
    "in front of",  # "standing in front of the @house": the house is the backdrop
    "outside",
    "along",
    "amid",
    "amidst",
)
# Between the place word and the mention may stand determiners ("in the @park", "in her @kitchen"),
# the last of them followed by one more word, an adjective or a possessive ("at a busy @cafe",
# "in the city's @park"). A determiner is required before that word, so that "at night @woman
# walks" does not make the woman a place.
DETERMINERS = ("a", "an", "the", "this", "that", "these", "those", "my", "your", "his", "her", "its", "our", "their")
POSSESSIVES = ("'s", "’s")
_PLACES = "|".join(word.replace(" ", r"\s+") for word in PLACE_WORDS)  # "in front of" across any spaces
_DETERMINERS = "|".join(DETERMINERS)
_PLACE_BEFORE_RE = re.compile(
    rf"\b(?:{_PLACES})\s+(?:(?:{_DETERMINERS})\s+)*(?:(?:{_DETERMINERS})\s+[a-z0-9][a-z0-9'’-]*\s+)?$",
    re.IGNORECASE,
)


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

    def names_a_place(self, tag: str) -> bool:
        """Whether the tag's first mention may name the place ("in @park", "at a busy @cafe"). A
        possessive names its owner, not the place: "a parrot on @woman's shoulder"."""
        first = next(m for m in self.mentions if m.tag == tag)
        if self.text[first.end : first.end + 2] in POSSESSIVES:
            return False
        return _PLACE_BEFORE_RE.search(self.text[: first.start]) is not None


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
