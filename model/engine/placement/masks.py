"""Mask maths: one step's attention maps of the tagged subjects into a mask per reference."""

from __future__ import annotations

import torch

from model.engine.placement.binding import Binding, Kind


def masks_from_maps(
    bindings: list[Binding], maps: dict[int, torch.Tensor], threshold: float, hw: tuple[int, int]
) -> torch.Tensor:
    """[n, h, w] binary masks: subjects by normalised map (threshold, then argmax, so no pixel
    belongs to two subjects), the place where no subject is, global references everywhere."""
    subjects = [b for b in bindings if b.kind is Kind.SUBJECT]
    # On the maps' device (the GPU's, in a real run), so that nothing crosses to the host.
    device = next(iter(maps.values())).device if maps else torch.device("cpu")
    claimed = torch.zeros(hw, device=device)
    owner = torch.full(hw, -1, dtype=torch.long, device=device)
    if subjects:
        stack = []
        for b in subjects:
            m = maps[b.index]
            lo = m.min()
            # No branch on a tensor value (that would be a host sync): a flat map gives 0 / tiny = 0.
            span = (m.max() - lo).clamp_min(torch.finfo(m.dtype).tiny)
            stack.append((m - lo) / span)
        normed = torch.stack(stack)
        best, arg = normed.max(dim=0)
        owner = torch.where(best >= threshold, arg, owner)
        claimed = (owner >= 0).float()
    masks = []
    subject_rank = {b.index: k for k, b in enumerate(subjects)}
    for b in bindings:
        if b.kind is Kind.SUBJECT:
            masks.append((owner == subject_rank[b.index]).float())
        elif b.kind is Kind.PLACE:
            masks.append(1.0 - claimed)
        else:
            masks.append(torch.ones(hw, device=device))
    return torch.stack(masks)
