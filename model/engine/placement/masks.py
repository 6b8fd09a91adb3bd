"""Mask maths: the tagged references' attention maps into a mask per reference.

The rule, for the references whose tag has a map (subjects and places, model/engine/placement/
binding.py), each map (already averaged across steps, model/engine/placement/state.py) smoothed
over 3x3 pixels and divided by its maximum:
1. A map has a clear region when its mean is at most `max_spread` of its peak; two clear maps that
   correlate above `max_correlation` cannot be told apart. A map that is clear and distinct
   competes; the others stay out of the competition.
2. Every competing tag claims the pixels where its map is at least `threshold` and higher than
   every other competing tag's: no pixel has two owners. Prompt-to-Prompt's local blend makes a
   word's region the same way (its map divided by its maximum, then a threshold); Bounded
   Attention and FastComposer keep each subject's reference inside its own region so that
   subjects do not leak into each other.
3. A subject gets its region. A subject that does not compete gets the whole image: what its
   reference would do without a tag (plain IP-Adapter), rather than a region cut from noise or
   from another tag's blob.
4. A place gets its region, and the pixels no tag claims when it is the backdrop: when less than
   `worn_overlap` of its region lies on the competing subjects' maps (a dress or a suit lies on
   the person who wears it, a park around them). A place that does not compete is the backdrop:
   it never paints over a subject, which a whole-image fallback would.
5. A global reference gets the whole image.
Conceptrol masks a reference the same way: by the attention map of the words that name it
(averaged over their tokens and the heads, from the conditional half, in a layer of SDXL's first
decoder block), divided by its maximum; it weights by that map where this rule thresholds it.

All of it is tensor arithmetic on the maps' device, with no branch on a tensor's value: a branch
would wait for the GPU (a host sync) at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from model.engine.placement.binding import Binding, Kind, RegionConfig


@dataclass(frozen=True)
class Placement:
    """One step's outcome: `masks` [n, h, w] (0 or 1) in binding order; then, for the tagged
    references (the bindings that are not global, in binding order), whether each one's map showed
    no clear region (`unclear`, [k]), which pairs of them cannot be told apart (`alike`, [k, k]),
    and whether each place took the pixels no tag claims (`backdrop`, [k], False for a subject)."""

    masks: torch.Tensor
    unclear: torch.Tensor
    alike: torch.Tensor
    backdrop: torch.Tensor


def place(bindings: list[Binding], maps: torch.Tensor, config: RegionConfig) -> Placement:
    """The module's rule on `maps`, [k, h, w]: one map per subject or place, in binding order."""
    mapped = [j for j, b in enumerate(bindings) if b.kind is not Kind.GLOBAL]
    n, k = len(bindings), len(mapped)
    if maps.shape[0] != k:
        raise ValueError(f"{maps.shape[0]} maps for {k} tagged references")
    device = maps.device
    hw = tuple(maps.shape[-2:])
    if k == 0:  # nothing tagged: every reference everywhere
        none = torch.zeros(0, dtype=torch.bool, device=device)
        return Placement(torch.ones(n, *hw, device=device), none, none.view(0, 0), none)
    # 3x3 smoothing: a region is a patch of neighbouring pixels, a lone pixel is noise, neither to
    # be a region nor the peak that the region is divided by (Attend-and-Excite smooths a token's
    # map before reading its peak; Prompt-to-Prompt's local blend pools 3x3). The border is
    # repeated outwards, so that a region neither shrinks along it (as with zeros outside) nor
    # grows onto it from one pixel away (as with a mean over the pixels inside).
    padded = F.pad(maps.float()[:, None], (1, 1, 1, 1), mode="replicate")
    smooth = F.avg_pool2d(padded, 3, stride=1)[:, 0]
    flat = smooth.reshape(k, -1)
    peak = flat.amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero map stays 0
    normed = smooth / peak[:, None, None]
    clear = normed.reshape(k, -1).mean(dim=1) <= config.max_spread
    # Pearson correlation of every pair; only clear maps are compared, so that a flat map's noise
    # cannot knock out a clear one (and a flat map has nothing to correlate: the eps keeps it finite).
    centred = flat - flat.mean(dim=1, keepdim=True)
    unit = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
    pairs = (unit @ unit.T > config.max_correlation) & ~torch.eye(k, dtype=torch.bool, device=device)
    pairs = pairs & clear[:, None] & clear[None, :]
    competes = clear & ~pairs.any(dim=1)
    score = normed * competes[:, None, None]
    best, arg = score.max(dim=0)
    owner = torch.where(best >= config.threshold, arg, -1)
    own = owner[None] == torch.arange(k, device=device)[:, None, None]  # [k, h, w]
    claimed = owner >= 0
    # Where the competing subjects are (their maps before the competition): what a worn or held
    # place lies on. From factory calls: a tensor made from a Python list is a copy from the host.
    subject = torch.stack([_flag(bindings[j].kind is Kind.SUBJECT, device) for j in mapped])
    on_subjects = ((normed >= config.threshold) & (competes & subject)[:, None, None]).any(dim=0)
    area = own.sum(dim=(1, 2)).float()
    overlap = (own & on_subjects).sum(dim=(1, 2)).float() / area.clamp_min(1.0)
    backdrop = ~competes | (overlap < config.worn_overlap)

    # A subject: its region, or everywhere if it did not compete. A place: its region, and as the
    # backdrop what no tag claims.
    tagged = torch.where(
        subject[:, None, None], own | ~competes[:, None, None], own | (backdrop[:, None, None] & ~claimed)
    ).float()
    whole = torch.ones(hw, device=device)
    rank = {j: r for r, j in enumerate(mapped)}
    masks = torch.stack([whole if j not in rank else tagged[rank[j]] for j in range(n)])
    return Placement(masks, ~clear, pairs, backdrop & ~subject)


def _flag(value: bool, device: torch.device) -> torch.Tensor:
    """A 0-d bool tensor made on `device` by a factory call, not copied from the host."""
    return (torch.ones if value else torch.zeros)((), dtype=torch.bool, device=device)
