"""Lanczos resampling on the image's device: the refine pass's upscale stays on the GPU.

Pillow's Lanczos needs the decoded base on the host as 8-bit, and diffusers' img2img then turns
the upscaled picture back into a float tensor on the host and copies it to the GPU: tens of
milliseconds of host work per refined request (docs/performance.md). Here the same filter is two
matrix products on the device.

Pillow's coefficients (libImaging/Resample.c, precompute_coeffs): output pixel `i` is centred at
`(i + 0.5) * scale` in the source, the filter is stretched by `max(scale, 1)` when downscaling, and
each row of weights is normalised to sum to one, which also handles the image's edges. Pillow
rounds to 8 bits between its horizontal and vertical passes; this does not, so the two agree to
within one level of 255 (tested for every plan).
"""

from __future__ import annotations

import functools

import torch

from model.engine.plan import cover_box

LANCZOS_SUPPORT = 3.0


def lanczos_weights(size_in: int, size_out: int, first: int = 0, count: int | None = None) -> torch.Tensor:
    """[count, size_in] weights of output pixels first .. first + count of a Lanczos-3 resize of
    `size_in` pixels to `size_out` (float64; rows sum to one)."""
    count = size_out - first if count is None else count
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    centres = (torch.arange(first, first + count, dtype=torch.float64) + 0.5) * scale
    distance = (torch.arange(size_in, dtype=torch.float64)[None, :] + 0.5 - centres[:, None]) / stretch
    weights = torch.sinc(distance) * torch.sinc(distance / LANCZOS_SUPPORT)
    weights = torch.where(distance.abs() < LANCZOS_SUPPORT, weights, 0.0)
    return weights / weights.sum(dim=1, keepdim=True)


@functools.lru_cache(maxsize=32)  # 7 refined plans x 2 axes, per device
def device_weights(size_in: int, size_out: int, first: int, count: int, device: torch.device) -> torch.Tensor:
    """lanczos_weights in float32 on `device`, made once: building them costs the host more than
    the device's resize saves."""
    return lanczos_weights(size_in, size_out, first, count).to(device, torch.float32)


def cover_resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[n, c, h, w] pixels resized with Lanczos to cover `size` (w, h), then centre-cropped to it,
    as model.engine.generate.resample does with Pillow; computed in float32 on the pixels' device, only
    for the rows and columns the crop keeps, and clamped to [0, 1]."""
    height, width = pixels.shape[-2:]
    (resized_w, resized_h), (left, top, right, bottom) = cover_box((width, height), size)
    across = device_weights(width, resized_w, left, right - left, pixels.device)
    down = device_weights(height, resized_h, top, bottom - top, pixels.device)
    # float32: Lanczos's negative lobes and the sums of ~7 taps want more than half precision.
    out = down @ (pixels.float() @ across.T)
    return out.clamp_(0.0, 1.0)
