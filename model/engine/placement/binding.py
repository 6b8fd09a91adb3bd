"""Which reference goes where: the binding policy of tag placement, and its knobs. Pure: no torch.

A reference mentioned as a subject ("@woman reading") gets its tag's region; one mentioned as the
place ("in @park", "at @cafe") gets the region no subject claims, so it never paints over the
subjects; untagged or unmentioned references apply to the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from model.contract.prompt import ParsedPrompt


class Kind(StrEnum):
    """Where a reference applies."""

    SUBJECT = "subject"  # its tag's region
    PLACE = "place"  # the region no subject claims
    GLOBAL = "global"  # the whole image


@dataclass(frozen=True)
class RegionConfig:
    """The knobs of tag localization, with defaults from the literature."""

    # Fraction of steps before tagged references switch on: FastComposer delays identity
    # injection to about the first 20-30% of steps so that the layout comes from the text.
    warmup_fraction: float = 0.25
    # A subject claims a pixel where its normalised map is at least this (Prompt-to-Prompt style
    # local-blend thresholds sit at 0.3 to 0.5) and higher than every other subject's.
    threshold: float = 0.35
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
    """Decide for each reference (in request order) whether it is a subject, the place or global."""
    bindings = []
    for index, tag in enumerate(tags):
        if tag is None or tag not in positions:
            bindings.append(Binding(index=index, tag=tag, kind=Kind.GLOBAL))
            continue
        kind = Kind.PLACE if parsed.names_a_place(tag) else Kind.SUBJECT
        bindings.append(Binding(index=index, tag=tag, kind=kind, tokens=positions[tag]))
    if not any(b.kind is Kind.SUBJECT for b in bindings):
        # Nothing claims a region, so the place is simply everywhere.
        bindings = [Binding(b.index, b.tag, Kind.GLOBAL, b.tokens) if b.kind is Kind.PLACE else b for b in bindings]
    return bindings
