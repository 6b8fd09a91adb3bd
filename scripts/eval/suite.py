"""The fixed suite: four references the model makes itself from text (a person, a second person,
an object, a place), and the tagged prompts rendered with them. Fixed so that two runs (two
machines, two versions of the placement rule) measure the same thing. Pure data: no torch."""

from __future__ import annotations

from dataclasses import dataclass

# The ratio-table entry of the references (square: the image encoder reads a centred square).
REFERENCE_ENTRY = ("720p", "1:1")
# The suite's default entry: no refine pass, no crop (its base is exactly square).
DEFAULT_ENTRY = ("720p", "1:1")


@dataclass(frozen=True)
class Reference:
    """A reference the model makes in text-only mode, from a fixed prompt and seed."""

    key: str
    what: str  # person, second person, object, place
    prompt: str
    seed: int


REFERENCES: tuple[Reference, ...] = (
    Reference(
        "woman",
        "person",
        "a studio portrait photo of a young woman with curly red hair and freckles, wearing a green knit "
        "sweater, plain grey background",
        101,
    ),
    Reference(
        "man",
        "second person",
        "a studio portrait photo of an old man with a white beard and round glasses, wearing a navy blue "
        "shirt, plain grey background",
        202,
    ),
    Reference(
        "raincoat",
        "object",
        "a product photo of a bright yellow hooded raincoat, on a white background",
        303,
    ),
    Reference(
        "park",
        "place",
        "a wide photo of an autumn park with orange maple trees, a gravel path and a wooden bench, no people",
        404,
    ),
)
REFERENCE_KEYS = tuple(r.key for r in REFERENCES)


@dataclass(frozen=True)
class Case:
    """One tagged prompt: each tag, in request order, with the reference it is given."""

    id: str
    prompt: str
    tags: tuple[tuple[str, str], ...]  # (tag, reference key)
    note: str  # what the case exercises

    def __post_init__(self) -> None:
        unknown = [ref for _, ref in self.tags if ref not in REFERENCE_KEYS]
        if unknown or not 1 <= len(self.tags) <= 3:
            raise ValueError(f"case {self.id}: 1 to 3 tags, each with one of {REFERENCE_KEYS}, got {self.tags}")


SUITE: tuple[Case, ...] = (
    Case("noun", "a photo of @woman reading a book", (("woman", "woman"),), "one tag, a noun"),
    Case("opaque", "a candid photo of @chr1x sitting on a bench", (("chr1x", "man"),), "one tag that is no word"),
    Case(
        "two-nouns",
        "@woman and @man standing side by side, full body photo",
        (("woman", "woman"), ("man", "man")),
        "two people, nouns",
    ),
    Case(
        "two-names",
        "@anna talking with @marco at a cafe table",
        (("marco", "man"), ("anna", "woman")),
        "two people, names; request order differs from the prompt's",
    ),
    Case(
        "two-opaque",
        "@ref1 and @ref2 walking down a street together",
        (("ref1", "woman"), ("ref2", "man")),
        "two opaque tags that share a token",
    ),
    Case(
        "clothing",
        "@woman in a @raincoat, standing in the rain",
        (("woman", "woman"), ("raincoat", "raincoat")),
        "a person and what she wears",
    ),
    Case(
        "object-place",
        "a @raincoat hanging on a bench in @park",
        (("raincoat", "raincoat"), ("park", "park")),
        "an object in a place",
    ),
    Case(
        "person-place",
        "@man sitting on a bench in @park",
        (("park", "park"), ("man", "man")),
        "a person in a place; the place first in the request",
    ),
    Case(
        "three",
        "@woman and @man in @park",
        (("park", "park"), ("man", "man"), ("woman", "woman")),
        "two people in a place",
    ),
    Case(
        "three-clothing",
        "@anna wearing @raincoat in @park",
        (("anna", "woman"), ("raincoat", "raincoat"), ("park", "park")),
        "a person, her clothing and the place",
    ),
)
CASES = {case.id: case for case in SUITE}
