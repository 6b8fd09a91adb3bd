"""The real diffusers pipeline on tiny weights, in process: sizes, determinism, cache, errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from model.contract.request import Request
from model.contract.tables import OUTPUT_SIZES
from model.engine.generate import decode, to_pil
from model.engine.placement.state import RegionState
from model.serving.service import ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from scripts.lab.host_overhead import text_projected_every_step
from tests.engine.conftest import digest, reference, tagged


@pytest.mark.parametrize(("resolution", "aspect_ratio"), [(r, a) for r, table in OUTPUT_SIZES.items() for a in table])
def test_every_table_entry_has_its_exact_size(service: ImageService, resolution: str, aspect_ratio: str) -> None:
    out = service.predict(Request(prompt="a lighthouse", resolution=resolution, aspect_ratio=aspect_ratio, seed=1))
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == OUTPUT_SIZES[resolution][aspect_ratio]


def test_same_seed_same_bytes_other_seed_other_image(service: ImageService, tmp_path: Path) -> None:
    refs = [reference(tmp_path, "green"), reference(tmp_path, "pink", (200, 300))]
    request = Request(
        prompt="@woman in @park",
        resolution="720p",
        aspect_ratio="1:1",
        reference_tags=["park", "woman"],
        reference_images=refs,
        seed=1020561550,
    )
    first = digest(service.predict(request))
    assert digest(service.predict(request)) == first
    other = Request(**{**request.__dict__, "seed": 1020561551})
    assert digest(service.predict(other)) != first


def test_replicate_log_lines(service: ImageService, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    refs = [reference(tmp_path, c) for c in ("green", "pink", "blue")]
    service.predict(
        Request(
            prompt="a close up portrait of @woman and @man standing in @park",
            resolution="1080p",
            aspect_ratio="4:3",
            reference_tags=["park", "woman", "man"],
            reference_images=refs,
            seed=1020561550,
        )
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "Using seed: 1020561550",
        "Using reference tags: park, woman, man",
        "Generating image with ratio 1440:1080 (4:3 at 1080p resolution)",
        "Base 1152x864, refined to 1440x1080",
    ]
    assert "Generating..." in lines and "0%" in lines and "100%" in lines
    assert lines[-1].startswith("Generated image in ") and lines[-1].endswith("sec")


def test_a_mention_past_77_tokens_still_places_its_reference(
    service: ImageService, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    scene = "a quiet street at dusk, warm lamps, wet cobblestones, " * 7  # 84 tokens before the mention
    # 1080p 1:1: a base pass and a refine pass, both with the 154-token text.
    path = service.predict(tagged(tmp_path, scene + "and @man walks home", ["man"], "1080p", "1:1", seed=5))
    out = capsys.readouterr().out
    assert "Base 1024x1024, refined to 1080x1080" in out
    assert "@man covers " in out and "(subject)" in out  # a region, not the whole image
    assert "tokens; the text encoders read" not in out
    assert Image.open(path).size == (1080, 1080)


def test_a_prompt_past_300_tokens_says_what_is_not_read(
    service: ImageService, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    prompt = "@woman " + "a " * 300 + "and @dog"  # 615 characters, 303 tokens: @dog is the 303rd
    service.predict(tagged(tmp_path, prompt, ["woman", "dog"], "720p", "1:1", seed=5))
    out = capsys.readouterr().out.splitlines()
    assert "Prompt is 303 tokens; the text encoders read the first 300" in out
    assert "@dog is mentioned only after that, so its reference applies to the whole image" in out
    assert not any(line.startswith("@woman is mentioned") for line in out)


def test_random_seed_is_drawn_and_logged(service: ImageService, capsys: pytest.CaptureFixture) -> None:
    service.predict(Request(prompt="a fox", resolution="720p", aspect_ratio="1:1"))
    seed_line = capsys.readouterr().out.splitlines()[0]
    assert seed_line.startswith("Using seed: ") and 0 <= int(seed_line.split(": ")[1]) <= 4294967295


def test_refine_pass_carries_the_base_pass_references_text_and_tag_masks(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict] = []
    for cls in (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline):
        original = cls.__call__

        def spy(self: object, *args: object, _original=original, _name=cls.__name__, **kwargs: object) -> object:
            calls.append({"pipeline": _name, **kwargs})
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)
    served: list[tuple[RegionState, torch.Tensor]] = []
    layer_masks = RegionState.layer_masks

    def record(self: RegionState, seq_len: int, device: torch.device) -> torch.Tensor:
        masks = layer_masks(self, seq_len, device)
        served.append((self, masks))
        return masks

    monkeypatch.setattr(RegionState, "layer_masks", record)
    out = service.predict(tagged(tmp_path, "@woman and @man on a beach", ["woman", "man"], "1080p", "16:9", seed=5))
    with Image.open(out) as image:
        assert image.size == (1920, 1080)
    base, refine = calls
    assert (base["pipeline"], refine["pipeline"]) == ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    assert (base["width"], base["height"]) == (1344, 768) and refine["image"].size == (1920, 1080)
    assert (base["target_size"], refine["target_size"]) == ((768, 1344), (1080, 1920))
    # Same references and same text, the very same tensors.
    assert refine["ip_adapter_image_embeds"][0] is base["ip_adapter_image_embeds"][0]
    assert refine["prompt_embeds"] is base["prompt_embeds"]
    assert refine["generator"] is base["generator"]
    # Same tag masks: the refine state is the base state's final masks, frozen.
    base_region, refine_region = base["cross_attention_kwargs"]["region"], refine["cross_attention_kwargs"]["region"]
    assert refine_region.frozen and not base_region.frozen
    assert refine_region.bindings == base_region.bindings
    assert base_region.weights is not None and torch.equal(refine_region.weights, base_region.weights)
    refine_masks = [m for state, m in served if state is refine_region]
    assert refine_masks, "the refine pass never applied the tag masks"
    for masks in refine_masks:
        resized = torch.nn.functional.interpolate(base_region.weights[None], size=masks.shape[-2:], mode="nearest")
        assert torch.equal(masks, resized)


def test_decode_falls_back_to_tiles_on_out_of_memory(service: ImageService, monkeypatch: pytest.MonkeyPatch) -> None:
    vae = service.pipe.vae
    real_decode = vae.decode
    tiling_seen: list[bool] = []

    def decode_oom_untiled(*args: object, **kwargs: object) -> object:
        tiling_seen.append(vae.use_tiling)
        if not vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(vae, "decode", decode_oom_untiled)
    latents = torch.randn(1, 4, 96, 128, generator=torch.Generator().manual_seed(0))
    image, tiled = decode(vae, service.pipe.image_processor, latents, "auto")
    assert tiled and image.size == (1024, 768) and tiling_seen == [False, True]
    assert vae.use_tiling is False  # shared state restored for the next request
    with pytest.raises(torch.OutOfMemoryError):
        decode(vae, service.pipe.image_processor, latents, "never")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_to_pil_is_diffusers_postprocess_pixel_for_pixel(service: ImageService, dtype: torch.dtype) -> None:
    """The decoded image is converted to 8 bits where it lies; the result is diffusers' own."""
    processor = service.pipe.image_processor
    # A VAE's output range and beyond (it is clamped), with values on the rounding boundaries.
    pixels = (torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0)) * 0.8).to(dtype)
    pixels[0, 0, 0, :5] = torch.tensor([-1.0, 1.0, 0.0, -3.0, 3.0], dtype=dtype)
    ours = np.asarray(to_pil(processor, pixels))
    theirs = np.asarray(processor.postprocess(pixels, output_type="pil")[0])
    assert ours.dtype == np.uint8 and ours.shape == (96, 128, 3)
    assert np.array_equal(ours, theirs)


def test_save_masks_writes_where_each_tag_landed(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(service, "settings", replace(service.settings, save_masks=True))
    # Two steps: the first is warm-up (tagged references off), the second applies the masks.
    monkeypatch.setattr(service, "config", replace(service.config, steps=2))
    out = service.predict(tagged(tmp_path, "@woman standing in @park", ["woman", "park"], "720p", "4:3", seed=9))
    masks_path = out.with_suffix(".masks.png")
    assert f"Tag masks written to {masks_path}" in capsys.readouterr().out
    with Image.open(masks_path) as overlay, Image.open(out) as image:
        assert overlay.size == image.size == (960, 720)
        pixels = np.asarray(overlay.convert("RGB"), dtype=np.int16)
    # Every pixel belongs to the subject or to the place (the place is what no subject claims),
    # so the whole picture is tinted: red (reference 1) or blue (reference 2), never plain grey.
    body = pixels[80:, :]  # below the legend
    red = (body[..., 0] - body[..., 2]) > 40
    blue = (body[..., 2] - body[..., 0]) > 40
    assert np.all(red | blue)


def test_a_masks_folder_keeps_the_masks_under_the_outputs_name(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "masks"
    folder.mkdir()
    monkeypatch.setattr(service, "settings", replace(service.settings, masks_dir=folder))
    monkeypatch.setattr(service, "config", replace(service.config, steps=2))  # a step that applies masks
    out = service.predict(tagged(tmp_path, "@woman standing in @park", ["woman", "park"], "720p", "1:1", seed=3))
    masks_path = folder / f"{out.stem}.masks.png"
    assert f"Tag masks written to {masks_path}" in capsys.readouterr().out
    assert sorted(folder.iterdir()) == [masks_path], "only the masks go to the folder"
    assert not out.with_suffix(".masks.png").exists(), "not beside the output as well"
    with Image.open(masks_path) as overlay:
        assert overlay.size == (720, 720)
    # The folder is the user's: the writer's clean-up of old outputs never reaches it.
    for _ in range(service.output.keep):
        service.output.write(Image.new("RGB", (8, 8)), seed=0)
    assert not out.exists() and masks_path.exists()


def test_repeated_prompt_skips_the_text_encoders(service: ImageService) -> None:
    request = Request(prompt="a heron at first light", resolution="720p", aspect_ratio="1:1", seed=6)
    service.predict(request)
    calls = service.text.encoder_calls
    service.predict(Request(**{**request.__dict__, "seed": 7}))
    assert service.text.encoder_calls == calls
    service.predict(Request(**{**request.__dict__, "prompt": "a heron at dusk"}))
    assert service.text.encoder_calls == calls + 1


@pytest.mark.parametrize(("prompt", "tags"), [("@woman with @dog", ["woman", "dog"]), ("a woman with a dog", [])])
@pytest.mark.usefixtures("small_for_one_test")
def test_cross_attention_projects_the_text_once_per_pass(
    tiny_weights: Path, tmp_path: Path, prompt: str, tags: list[str]
) -> None:
    """Each cross-attention layer runs `to_k` on the prompt once per pass (base + refine), not at
    every step, with references or none, and the image is byte-identical to projecting it at
    every step."""
    gen = build_service(Settings(weights_dir=tiny_weights, steps=4, device="cpu"))
    layer = next(m for name, m in gen.pipe.unet.named_modules() if name.endswith("attn2"))
    calls = []
    layer.to_k.register_forward_hook(lambda *_: calls.append(1))
    request = tagged(tmp_path, prompt, tags, "1080p", "4:3", seed=11)  # 4 + 1 steps

    once = gen.predict(request)
    assert len(calls) == 2
    calls.clear()
    with text_projected_every_step():
        every_step = gen.predict(request)
    assert len(calls) == 5
    assert digest(once) == digest(every_step)
