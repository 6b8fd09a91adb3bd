"""The refine pass's upscale on the device (model/engine/resize.py): Pillow's Lanczos, as matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline

from harness.images import photo_like
from model.contract.prompt import parse_prompt
from model.engine.generate import Stopwatch, generate, resample
from model.engine.plan import PLANS, plan_for
from model.engine.resize import cover_resize, lanczos_weights
from model.serving.settings import Settings
from model.serving.setup import build_service


def test_each_output_pixel_weights_sum_to_one_within_three_source_pixels() -> None:
    weights = lanczos_weights(864, 1080)  # upscale: the filter keeps its width of 3 source pixels
    torch.testing.assert_close(weights.sum(1), torch.ones(1080, dtype=torch.float64))
    assert int((weights != 0).sum(1).max()) <= 6
    down = lanczos_weights(1080, 720)  # downscale: stretched by 1.5
    assert int((down != 0).sum(1).max()) <= 10


@pytest.mark.parametrize("plan", list(dict.fromkeys(PLANS.values())), ids=lambda p: f"{p.base}->{p.target}")
def test_cover_resize_is_pillows_lanczos_within_one_level(plan: object) -> None:
    base = photo_like(*plan.base)
    pillow = np.asarray(resample(base, plan.target)).astype(int)
    pixels = torch.from_numpy(np.array(base)).permute(2, 0, 1)[None].float() / 255
    ours = (cover_resize(pixels, plan.target)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    difference = np.abs(ours.astype(int) - pillow)  # Pillow rounds to 8 bits between its passes
    assert ours.shape == pillow.shape and difference.max() <= 1 and difference.mean() < 0.25


def test_refine_from_the_device_upscale_matches_pillows(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refine pass takes the device's upscale as a [0, 1] tensor, as diffusers' img2img
    documents, and makes the image it makes from Pillow's, but for rounding."""
    service = build_service(Settings(weights_dir=tiny_weights, steps=2, device="cpu"))
    given: list[object] = []
    original = StableDiffusionXLImg2ImgPipeline.__call__

    def spy(self: object, *args: object, **kwargs: object) -> object:
        given.append(kwargs["image"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionXLImg2ImgPipeline, "__call__", spy)
    prepared = service.prepare(parse_prompt("a lighthouse at dusk"), [], plan_for("1080p", "4:3"))
    text = service.text.encode(prepared.prompt.text)
    inputs = service._inputs(prepared, 3, service.encoder.encode([]), text)
    images = [
        np.asarray(
            generate(
                service.pipe,
                service.refiner,
                inputs,
                service.runtime,
                Stopwatch(torch.device("cpu")),
                upscale_on_device=on_device,
            ).image
        ).astype(int)
        for on_device in (False, True)
    ]
    assert isinstance(given[1], torch.Tensor) and given[1].shape == (1, 3, 1080, 1440)
    assert float(given[1].min()) >= 0 and float(given[1].max()) <= 1
    assert images[0].shape == images[1].shape == (1080, 1440, 3)
    # Mean 0.44 of 255 here (random tiny weights amplify the inputs' one-level differences in
    # places); unrelated images differ by tens.
    assert np.abs(images[0] - images[1]).mean() < 2
