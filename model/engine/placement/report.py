"""What the prediction logs say about tag placement: each tagged reference's share of the image
under the masks that the image's last denoising step applied (the refine pass's when there is one,
which are the base pass's final masks; else the base pass's last step's), in request order; then
what the placement rule made of the maps behind those masks when a tag was not simply placed in
its region (model/engine/placement/masks.py): a tag with no clear region, tags that cannot be told
apart, a place worn or held rather than the backdrop."""

from __future__ import annotations

import torch

from model.engine.placement.binding import Binding, Kind
from model.engine.placement.masks import Placement
from model.engine.placement.state import RegionState


def coverage_lines(region: RegionState) -> list[str]:
    """One line per reference placed by its tag (`region`: the image's last pass), then one per
    fallback or worn place. Reads the masks and the rule's flags once (device-to-host copies)."""
    tagged = [b for b in region.bindings if b.tag and b.kind is not Kind.GLOBAL]
    if not tagged:
        return []
    shares = region.shares()
    if not shares:  # one step, all of it warm-up, and no refine pass after it
        return [
            f"@{b.tag}'s reference was not applied: tagged references start after the first "
            f"{region.warmup_steps} of {region.steps} steps"
            for b in tagged
        ]
    lines = [f"@{b.tag} covers {shares[b.index]:.0%} of the image ({b.kind})" for b in tagged]
    if region.placement is not None:
        lines += placement_lines(region.bindings, region.placement)
    return lines


def placement_lines(bindings: list[Binding], placement: Placement) -> list[str]:
    """In words, where the rule did more than give a tag its region (`bindings` in binding order,
    which is request order)."""
    tagged = [b for b in bindings if b.kind is not Kind.GLOBAL]  # the order of the rule's flags
    flags = torch.cat([placement.unclear[:, None], placement.backdrop[:, None], placement.alike], dim=1).cpu()
    unclear, backdrop, alike = flags[:, 0].tolist(), flags[:, 1].tolist(), flags[:, 2:].tolist()
    lines = []
    for r, b in enumerate(tagged):
        if unclear[r]:
            lines.append(f"@{b.tag} has no clear region in its attention map, so its reference applies to {_where(b)}")
        for s, other in enumerate(tagged[r + 1 :], start=r + 1):
            if not alike[r][s]:
                continue
            if _where(b) == _where(other):
                fallback = f"their references apply to {_where(b)}"
            else:
                fallback = f"@{b.tag}'s reference applies to {_where(b)} and @{other.tag}'s to {_where(other)}"
            lines.append(f"@{b.tag} and @{other.tag} cannot be told apart in their attention maps, so {fallback}")
        if b.kind is Kind.PLACE and not backdrop[r]:
            lines.append(
                f"@{b.tag} lies on a subject (worn or held), so its reference applies to its own region, "
                "not to the backdrop"
            )
    return lines


def _where(binding: Binding) -> str:
    """Where a tagged reference whose map does not compete applies (model/engine/placement/masks.py)."""
    return "the whole image" if binding.kind is Kind.SUBJECT else "what no other tag claims"
