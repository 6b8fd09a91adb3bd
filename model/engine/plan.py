"""How each output size is made: a base pass near SDXL's native megapixel, then the exact size.

SDXL was trained on buckets of about 1 MP. Rendering 2 MP directly duplicates subjects and limbs,
and 0.5 MP comes out poor. So every entry of the ratio table is generated at a base size of about
1 MP with the entry's aspect ratio, then brought to its exact size: by an img2img refine pass when
the target is larger (upscale, then re-denoise lightly, as "hires fix" does), or by a
high-quality downscale when it is smaller.

Pure data and arithmetic: no torch, no PIL.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.contract.tables import OUTPUT_SIZES

# Base size (width, height) for each aspect ratio: SDXL's training buckets where one is within
# 4% of the ratio (1344x768, 1024x1024); otherwise the nearest multiple-of-32 size of about 1 MP
# (1152x864 is exactly 4:3; 1472x640 is 2.30:1, nearer 21:9 than the 1536x640 bucket's 2.4:1).
BASE_SIZES: dict[str, tuple[int, int]] = {
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "4:3": (1152, 864),
    "3:4": (864, 1152),
    "1:1": (1024, 1024),
    "21:9": (1472, 640),
}


@dataclass(frozen=True)
class Plan:
    """One table entry's generation plan."""

    base: tuple[int, int]  # (width, height) of the base pass
    target: tuple[int, int]  # (width, height) of the output, exactly the ratio table's

    @property
    def refine(self) -> bool:
        """True when the target has more pixels than the base: upscale and refine (img2img);
        otherwise the base is downscaled to the target."""
        return self.target[0] * self.target[1] > self.base[0] * self.base[1]

    def total_steps(self, steps: int, strength: float) -> int:
        """Denoising steps of the whole plan: the base pass, plus the refine pass's if any."""
        return steps + (refine_steps(steps, strength) if self.refine else 0)

    def describe(self) -> str:
        """The plan as the prediction logs name it."""
        (bw, bh), (tw, th) = self.base, self.target
        return f"Base {bw}x{bh}, {'refined' if self.refine else 'downscaled'} to {tw}x{th}"


def refine_steps(steps: int, strength: float) -> int:
    """Steps the img2img refine pass runs: int(steps x strength), as diffusers counts them, and at
    least one."""
    return max(1, int(steps * strength))


# The plan of every (resolution, aspect_ratio) entry, derived once from the two tables above.
PLANS: dict[tuple[str, str], Plan] = {
    (resolution, aspect): Plan(base=BASE_SIZES[aspect], target=size)
    for resolution, sizes in OUTPUT_SIZES.items()
    for aspect, size in sizes.items()
}


def plan_for(resolution: str, aspect_ratio: str) -> Plan:
    """The plan for a validated resolution and aspect ratio."""
    return PLANS[(resolution, aspect_ratio)]


def cover_box(source: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, tuple[int, int, int, int]]:
    """Resize `source` (w, h) to cover `target` keeping its aspect, then centre-crop: returns the
    resized size (w, h) and the crop box (left, top, right, bottom). The base's aspect differs from
    the target's by at most a few percent, so this crops a few rows or columns instead of
    stretching the picture."""
    (sw, sh), (tw, th) = source, target
    scale = max(tw / sw, th / sh)
    rw, rh = max(tw, round(sw * scale)), max(th, round(sh * scale))
    left, top = (rw - tw) // 2, (rh - th) // 2
    return (rw, rh), (left, top, left + tw, top + th)
