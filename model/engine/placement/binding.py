"""Which reference goes where: the binding policy of tag placement, and its knobs. Pure: no torch.

What the text says decides each reference's kind: one mentioned as a subject ("@woman reading",
"@cat on @sofa") competes for the pixels of its tag's attention map; one mentioned after a place
word ("in @park", "@woman in @dress") competes the same way and, when its map shows it is the
backdrop rather than something a subject wears, also takes what no tag claims, so that it never
paints over the subjects; untagged or unmentioned references apply to the whole image. What the
maps say (a tag with no clear region, two tags whose maps cannot be told apart, a place worn or
the backdrop) is decided at every step from the maps (model/engine/placement/masks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from model.contract.prompt import ParsedPrompt


class Kind(StrEnum):
    """Where a reference applies."""

    SUBJECT = "subject"  # its tag's region
    PLACE = "place"  # its tag's region, and the region no tag claims when it is the backdrop
    GLOBAL = "global"  # the whole image


@dataclass(frozen=True)
class RegionConfig:
    """The knobs of tag localization, with defaults from the literature."""

    # Fraction of steps before tagged references switch on: FastComposer delays identity
    # injection to about the first 20-30% of steps so that the layout comes from the text.
    warmup_fraction: float = 0.25
    # A tag claims a pixel where its map, divided by its maximum, is at least this and higher than
    # every other tag's: Prompt-to-Prompt's local blend and Conceptrol divide a word's map by its
    # maximum (P2P's threshold is 0.3). Dividing by the maximum, unlike min-max, keeps a flat map
    # flat: min-max stretches any map's noise from 0 to 1 and so always makes a region.
    threshold: float = 0.35
    # A map has a clear region when its mean is at most this much of its peak (the peak at least
    # twice the mean): the map of a tag the text encoder reads as letters (@chr1x: "chr 1 x") is
    # flat, and a region cut from it means nothing.
    max_spread: float = 0.5
    # Two tags' maps that correlate above this cannot be told apart (@ref1 and @ref2 both read as
    # "ref"; two tags the model draws as one thing): splitting one blob between them by which is a
    # hair higher would place each reference at random.
    max_correlation: float = 0.9
    # A place whose region lies at least this much on the subjects' maps (where they are at least
    # `threshold` of their peak) is something a subject wears or holds ("@woman in @dress"), not the
    # backdrop: it gets its own region only.
    worn_overlap: float = 0.5
    # The maps are averaged across steps, each step weighing this much of the next one's: 1 weighs
    # every step so far alike (Prompt-to-Prompt's local blend sums the maps of all steps so far),
    # 0 reads each step's own maps. In between, the average damps the step-to-step jumps and still
    # follows a layout that settles late, the latest step weighing most.
    smoothing: float = 0.7
    # Cross-attention layers whose maps are averaged: SDXL's lowest-resolution decoder block
    # (32x32 at 1024px), where cross-attention is most semantic (as in MS-Diffusion and P2P).
    anchor_prefix: str = "up_blocks.0."


@dataclass(frozen=True)
class Binding:
    """How one reference applies (`kind`); `tokens` are its tag's positions in the text encoders'
    window."""

    index: int
    tag: str | None
    kind: Kind
    tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))  # a Kind's name as text is taken too


def bind_references(
    tags: list[str | None], parsed: ParsedPrompt, positions: dict[str, tuple[int, ...]]
) -> list[Binding]:
    """Decide for each reference (in request order) whether it is a subject, a place or global."""
    bindings = []
    for index, tag in enumerate(tags):
        if tag is None or tag not in positions:
            bindings.append(Binding(index=index, tag=tag, kind=Kind.GLOBAL))
            continue
        kind = Kind.PLACE if parsed.names_a_place(tag) else Kind.SUBJECT
        bindings.append(Binding(index=index, tag=tag, kind=kind, tokens=positions[tag]))
    if not any(b.kind is Kind.SUBJECT for b in bindings):
        # No subject ("a dog in @park"): as the backdrop the place would take the whole image,
        # since no other tag claims a pixel. Global says so at once, and keeps it on from the first
        # step, as it would be without a tag, rather than off for the tag warm-up.
        bindings = [Binding(b.index, b.tag, Kind.GLOBAL, b.tokens) if b.kind is Kind.PLACE else b for b in bindings]
    return bindings
