"""Stage 1 of a prediction (model/serving/service.py): check every request field before any
model work, and decode the references.

Each failure is an InputError naming the field, the value and the rule. Pure: no torch.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from model.contract.cache import LRUCache
from model.contract.errors import InputError, show
from model.contract.images import check_source, decode_references, reference_field, source_of
from model.contract.prompt import ParsedPrompt, find_mentions, parse_prompt
from model.contract.tables import (
    ASPECT_RATIOS,
    MAX_PROMPT_CHARS,
    MAX_REFERENCES,
    RESOLUTIONS,
    SEED_RANGE,
    TAG_PATTERN,
    TAG_RULE,
)

_TAG_RE = re.compile(TAG_PATTERN)


@dataclass(frozen=True)
class Request:
    """A request as it arrives: the interface's fields, unchecked."""

    prompt: str
    resolution: str
    aspect_ratio: str
    reference_tags: Sequence[str] = ()
    reference_images: Sequence[object] = ()
    seed: int | float | None = None  # JSON's 1.0 arrives as a float


# Fetches (URI, field) pairs, each named by its field in errors: their bytes, in order
# (model/serving/fetch.py, bound to the server's limits and the prediction's cancel).
Fetch = Callable[[Sequence[tuple[str, str]]], list[bytes]]
# Unicode categories of visible text: letters, numbers, punctuation, symbols (emoji included). A
# prompt of only others (spaces, controls such as NUL, format characters such as zero-width
# spaces, lone combining marks or variation selectors, unassigned code points) describes nothing.
VISIBLE_CATEGORIES = ("L", "N", "P", "S")


@dataclass(frozen=True)
class Reference:
    """One decoded reference image, its position in the request and its tag, if any."""

    index: int
    tag: str | None
    image: Image.Image
    source: str


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed every check."""

    prompt: ParsedPrompt
    resolution: str
    aspect_ratio: str
    references: tuple[Reference, ...]
    seed: int | None

    @property
    def entry(self) -> tuple[str, str]:
        """The ratio table's entry: (resolution, aspect_ratio)."""
        return self.resolution, self.aspect_ratio


def _check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise InputError(field, f"{show(value)} is not allowed; choose one of {', '.join(allowed)}")


def is_blank(text: str) -> bool:
    """Whether a text has no visible character (see VISIBLE_CATEGORIES)."""
    return not any(unicodedata.category(char).startswith(VISIBLE_CATEGORIES) for char in text)


def check_seed(seed: object) -> int | None:
    """The seed as an int: a whole number within SEED_RANGE (1.0 is 1, as JSON does not tell
    them apart), or None for a random one."""
    if seed is None:
        return None
    low, high = SEED_RANGE
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError("seed", f"{show(seed)} is not a whole number; use {low} to {high}")
    if not low <= seed <= high:
        raise InputError("seed", f"{seed} is out of range; use {low} to {high}")
    return seed


def check_fields(request: Request) -> None:
    """Every check that needs no image data, cheapest first."""
    if not isinstance(request.prompt, str) or is_blank(request.prompt):
        visible = " (no visible characters)" if isinstance(request.prompt, str) and request.prompt.strip() else ""
        raise InputError("prompt", f"{show(request.prompt)} is empty{visible}; describe the image to make")
    if len(request.prompt) > MAX_PROMPT_CHARS:
        rule = f"at most {MAX_PROMPT_CHARS} are allowed"
        raise InputError("prompt", f"{show(request.prompt)} is {len(request.prompt)} characters; {rule}")
    _check_choice("resolution", request.resolution, RESOLUTIONS)
    _check_choice("aspect_ratio", request.aspect_ratio, ASPECT_RATIOS)
    check_seed(request.seed)

    images, tags = list(request.reference_images), list(request.reference_tags)
    if len(images) > MAX_REFERENCES:
        raise InputError("reference_images", f"{len(images)} images given; at most {MAX_REFERENCES} are allowed")
    if len(tags) > len(images):
        raise InputError(
            "reference_tags",
            f"{len(tags)} tags given for {len(images)} image(s); give at most one tag per image",
        )
    seen: dict[str, int] = {}
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not _TAG_RE.match(tag):
            raise InputError(f"reference_tags[{i}]", f"{show(tag)} is not a valid tag: {TAG_RULE}")
        if tag in seen:
            raise InputError(
                f"reference_tags[{i}]", f"{show(tag)} repeats reference_tags[{seen[tag]}]; tags must be unique"
            )
        seen[tag] = i

    unknown = [m for m in find_mentions(request.prompt) if m not in seen]
    if unknown:
        available = ", ".join(f"@{t}" for t in tags) if tags else "none (no reference_tags given)"
        # Tags match exactly, as they are written; a mention that differs only in case is the
        # likeliest slip, so the message names the tag it probably meant.
        near = [t for t in tags if t.lower() == unknown[0].lower()]
        hint = f" (tags are case-sensitive: did you mean @{near[0]}?)" if near else ""
        raise InputError(
            "prompt",
            f"mentions @{unknown[0]}, which is not one of the reference tags; available: {available}{hint}",
        )


def validate_request(
    request: Request, decoded: LRUCache[Image.Image] | None = None, fetch: Fetch | None = None
) -> ValidRequest:
    """Check the request, fetch its URIs with `fetch` and decode its references (bytes decoded
    before come from `decoded`); raise InputError on the first problem."""
    check_fields(request)
    tags: list[str | None] = list(request.reference_tags)
    tags += [None] * (len(request.reference_images) - len(tags))
    fields = [reference_field(i, tag) for i, tag in enumerate(tags)]
    # Every source is checked before any is fetched or opened: nothing is fetched for a request
    # that a later reference makes fail.
    sources = [check_source(item, field) for item, field in zip(request.reference_images, fields, strict=True)]
    uris = [(source, field) for source, field in zip(sources, fields, strict=True) if isinstance(source, str)]
    if uris and fetch is None:
        raise ValueError("validate_request was given reference URIs and no fetch to read them")
    fetched = iter(fetch(uris) if uris and fetch is not None else [])
    blobs = [next(fetched) if isinstance(source, str) else source for source in sources]
    images = decode_references(list(zip(blobs, fields, strict=True)), cache=decoded)
    references = tuple(
        Reference(index=i, tag=tag, image=image, source=source_of(item))
        for i, (item, tag, image) in enumerate(zip(request.reference_images, tags, images, strict=True))
    )
    return ValidRequest(
        prompt=parse_prompt(request.prompt),
        resolution=request.resolution,
        aspect_ratio=request.aspect_ratio,
        references=references,
        seed=check_seed(request.seed),
    )
