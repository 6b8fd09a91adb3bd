"""The generation plan of every ratio-table entry (pure: no model)."""

from __future__ import annotations

import pytest

from model.contract.tables import OUTPUT_SIZES
from model.engine.plan import BASE_SIZES, PLANS, cover_box, plan_for

ENTRIES = [(r, a) for r, table in OUTPUT_SIZES.items() for a in table]


def test_every_entry_has_a_plan_with_its_exact_target() -> None:
    assert set(PLANS) == set(ENTRIES)
    for (resolution, aspect), plan in PLANS.items():
        assert plan.target == OUTPUT_SIZES[resolution][aspect]


@pytest.mark.parametrize(("resolution", "aspect_ratio"), ENTRIES)
def test_base_is_about_one_megapixel_with_the_targets_aspect(resolution: str, aspect_ratio: str) -> None:
    plan = plan_for(resolution, aspect_ratio)
    (bw, bh), (tw, th) = plan.base, plan.target
    assert 0.8e6 <= bw * bh <= 1.2e6, plan
    assert abs((bw / bh) / (tw / th) - 1) <= 0.04, plan
    # Multiples of 32: the latent (1/8) must halve twice through SDXL's UNet without remainder.
    assert bw % 32 == 0 and bh % 32 == 0, plan


def test_refine_exactly_when_the_target_is_larger() -> None:
    refined = {key for key, plan in PLANS.items() if plan.refine}
    # Every 1080p entry is above 1 MP; at 720p only 21:9 (1680x720, 1.21 MP) is.
    assert refined == {("1080p", a) for a in OUTPUT_SIZES["1080p"]} | {("720p", "21:9")}
    assert plan_for("1080p", "4:3").describe() == "Base 1152x864, refined to 1440x1080"
    assert plan_for("720p", "1:1").describe() == "Base 1024x1024, downscaled to 720x720"


@pytest.mark.parametrize("source", sorted(set(BASE_SIZES.values())))
@pytest.mark.parametrize("target", sorted({s for t in OUTPUT_SIZES.values() for s in t.values()}))
def test_cover_box_crops_to_the_target_without_stretching(source: tuple[int, int], target: tuple[int, int]) -> None:
    (rw, rh), (left, top, right, bottom) = cover_box(source, target)
    assert (right - left, bottom - top) == target
    assert left >= 0 and top >= 0 and right <= rw and bottom <= rh
    # The resize keeps the source's aspect (to rounding).
    assert abs(rw / rh - source[0] / source[1]) <= 2 / min(rh, rw) * (source[0] / source[1])
