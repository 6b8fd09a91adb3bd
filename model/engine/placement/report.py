"""What the prediction logs say about tag placement: each tagged reference's share of the image
under the masks that the image's last denoising step applied (the refine pass's when there is one,
which are the base pass's final masks; else the base pass's last step's), in request order."""

from __future__ import annotations

from model.engine.placement.binding import Kind
from model.engine.placement.state import RegionState


def coverage_lines(region: RegionState) -> list[str]:
    """One line per reference placed by its tag (`region`: the image's last pass). Reads the
    masks once (a device-to-host copy)."""
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
    return [f"@{b.tag} covers {shares[b.index]:.0%} of the image ({b.kind})" for b in tagged]
