"""The real diffusers pipeline on tiny weights, in process: sizes, determinism, cache, errors."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers.models import attention_processor
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessorPil, CLIPTextConfig

from model.contract import images
from model.contract.request import Request
from model.contract.tables import OUTPUT_SIZES, REFERENCE_DECODE_SIDE
from model.engine.generate import decode, to_pil
from model.engine.pipeline import (
    MissingWeightsError,
    ProjectionOncePerPass,
    Runtime,
    UNet,
    attention_forward,
    attention_modules,
    check_weights,
    load_pipeline,
    processor_parameters,
)
from model.engine.placement.state import RegionState
from model.engine.references import ReferenceEncoder
from model.engine.weights import (
    ALL_REPOS,
    IMAGE_ENCODER_SUBFOLDER,
    IP_ADAPTER,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT,
    LIGHTNING_LORA_WEIGHT,
    SDXL_BASE,
    SDXL_LIGHTNING,
    SDXL_VAE_FP16_FIX,
)
from model.serving.service import ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from scripts.lab.host_overhead import device_looked_up, text_projected_every_step
from tests.conftest import png_bytes, small_plans


@pytest.fixture(scope="module")
def service(tiny_weights: Path) -> ImageService:
    return build_service(Settings(weights_dir=tiny_weights, steps=1, device="cpu"))


def reference(tmp_path: Path, color: str, size: tuple[int, int] = (256, 256)) -> Path:
    path = tmp_path / f"{color}.png"
    path.write_bytes(png_bytes(size, color))
    return path


def tagged(tmp_path: Path, prompt: str, tags: list[str], resolution: str, aspect_ratio: str, seed: int) -> Request:
    """A request with one plain-colour reference per tag."""
    refs = [reference(tmp_path, colour) for colour in ("green", "pink", "navy")[: len(tags)]]
    return Request(prompt, resolution, aspect_ratio, reference_tags=tags, reference_images=refs, seed=seed)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small() -> Iterator[None]:
    """Plans at a sixteenth of their pixels for one test (conftest's `small` is for a whole module;
    here the other tests check full sizes): what runs once per pass or per call, counts and bytes
    compared, does not depend on the size."""
    with small_plans():
        yield


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


def test_references_are_decoded_at_three_times_what_the_image_encoder_reads(service: ImageService) -> None:
    """model/contract/images.py reduces references to REFERENCE_DECODE_SIDE: 3x the loaded encoder's input,
    as its preprocessor resizes and crops. That is diffusers' IP-Adapter preprocessing, on the PIL
    backend that the project's image (no torchvision) has, whatever this machine has installed."""
    processor = service.pipe.feature_extractor
    assert type(processor) is CLIPImageProcessorPil
    side = max(processor.size["shortest_edge"], processor.crop_size["height"], processor.crop_size["width"])
    assert side == service.pipe.image_encoder.config.image_size == 224
    assert 3 * side == REFERENCE_DECODE_SIDE


def test_repeated_reference_skips_the_image_encoder(
    service: ImageService, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    refs = [reference(tmp_path, "navy"), reference(tmp_path, "olive")]
    request = Request(
        prompt="@man", resolution="720p", aspect_ratio="1:1", reference_tags=["man"], reference_images=refs, seed=3
    )
    service.predict(request)
    calls = service.encoder.encoder_calls
    assert "0 cached, 2 encoded" in capsys.readouterr().out
    # The same pixels from another file are the same reference.
    copy = tmp_path / "copy.png"
    copy.write_bytes(refs[0].read_bytes())
    service.predict(Request(**{**request.__dict__, "reference_images": [copy, refs[1]]}))
    assert service.encoder.encoder_calls == calls
    assert "2 cached, 0 encoded" in capsys.readouterr().out


def test_a_reference_encodes_the_same_whichever_others_were_cached(service: ImageService) -> None:
    """A seed makes the same image whatever the cache held: a reference's features do not depend
    on which other references of its request were new (batched, they differed in the last bits)."""
    images = [Image.new("RGB", (128, 96), colour) for colour in ("green", "pink", "navy")]
    pipe = service.pipe
    fresh, used = (ReferenceEncoder(pipe.image_encoder, pipe.feature_extractor, "tiny", capacity=8) for _ in "ab")
    alone = [fresh.encode([image]).positive[0] for image in images]
    used.encode(images[:1])
    partly_cached = used.encode(images)
    assert (partly_cached.hits, partly_cached.misses) == (1, 2)
    assert all(torch.equal(a, b) for a, b in zip(alone, partly_cached.positive, strict=True))


def test_a_reference_file_sent_again_is_not_decoded_again(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cog downloads every request's references to new files; the same bytes are decoded once,
    and the image is the one decoding them again would give."""
    decoded: list[Path] = []
    real = images.decode_reference

    def decode(path: Path, *args: object) -> Image.Image:
        decoded.append(path)
        return real(path, *args)

    monkeypatch.setattr(images, "decode_reference", decode)
    first = reference(tmp_path, "teal", (320, 240))
    again = tmp_path / "again.png"
    again.write_bytes(first.read_bytes())
    request = Request(
        prompt="@cat", resolution="720p", aspect_ratio="1:1", reference_tags=["cat"], reference_images=[first], seed=5
    )
    outputs = [service.predict(request), service.predict(replace(request, reference_images=[again]))]
    assert decoded == [first]
    assert service.decoded is not None and service.decoded.weight >= 320 * 240 * 3
    assert np.array_equal(*(np.asarray(Image.open(path)) for path in outputs))


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


def test_missing_weights_name_the_download_script(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=r"scripts/download_weights\.py"):
        check_weights(tmp_path)


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


def half_precision_leaks(service: ImageService, dtype: torch.dtype) -> list[str]:
    """Parameters of the set-up model (both pipelines, the installed processors, the fused
    projections) that are not in `dtype`."""
    modules = {f"pipe.{n}": c for n, c in service.pipe.components.items() if isinstance(c, torch.nn.Module)}
    modules |= {f"refiner.{n}": c for n, c in service.refiner.components.items() if isinstance(c, torch.nn.Module)}
    assert {"pipe.unet", "pipe.vae", "pipe.text_encoder", "pipe.text_encoder_2", "pipe.image_encoder"} <= set(modules)
    return [f"{name}.{p}" for name, m in modules.items() for p, t in m.named_parameters() if t.dtype != dtype]


def test_fp16_setup_is_fp16_throughout_and_the_vae_never_upcasts(tiny_weights: Path) -> None:
    """The CUDA runtime's dtype, set up (not run) on the CPU: every module of both pipelines in
    fp16 after the whole setup (diffusers' from_pipe casts to float32 unless told otherwise), and
    the fp16-fix VAE's config tells diffusers not to upcast it (our own decode never does)."""
    service = build_service(Settings(weights_dir=tiny_weights, device="cpu", dtype="float16"))
    leaks = half_precision_leaks(service, torch.float16)
    assert not leaks, leaks[:5]
    assert service.pipe.vae.config.force_upcast is False


def test_ip_adapter_loads_with_one_walk_over_the_unet_into_diffusers_processors(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our UNet's IP-Adapter loading reads the processors once, where diffusers' reads them once per
    processor, and ends with the same processors, weight for weight."""
    walks: list[int] = []
    walk = AttentionMixin.attn_processors.fget
    monkeypatch.setattr(AttentionMixin, "attn_processors", property(lambda self: walks.append(1) or walk(self)))
    base = tiny_weights / SDXL_BASE.folder
    adapter = {
        "subfolder": IP_ADAPTER_SUBFOLDER,
        "weight_name": IP_ADAPTER_WEIGHT,
        "image_encoder_folder": IMAGE_ENCODER_SUBFOLDER,
    }
    files = {"variant": "fp16", "use_safetensors": True}
    loaded = {}
    for kind in ("ours", "diffusers"):
        unet = {"unet": UNet.from_pretrained(base, subfolder="unet", **files)} if kind == "ours" else {}
        pipe = StableDiffusionXLPipeline.from_pretrained(base, **files, **unet)
        walks.clear()
        pipe.load_ip_adapter(str(tiny_weights / IP_ADAPTER.folder), **adapter)
        loaded[kind] = (len(walks), pipe.unet.attn_processors)
    (our_walks, ours), (their_walks, theirs) = loaded["ours"], loaded["diffusers"]
    cross = [name for name in theirs if name.endswith("attn2.processor")]
    assert their_walks > len(cross) and our_walks <= 3, (our_walks, their_walks)
    assert {n: type(p) for n, p in ours.items()} == {n: type(p) for n, p in theirs.items()}
    for name in cross:
        for key, tensor in theirs[name].state_dict().items():
            torch.testing.assert_close(ours[name].state_dict()[key], tensor, rtol=0, atol=0)


def test_a_half_precision_runtime_generates_end_to_end(tiny_weights: Path, tmp_path: Path) -> None:
    """bfloat16 (which a CPU can run): every stage, references, tag masks and refine included,
    stays in the runtime's dtype and the output has the exact size."""
    service = build_service(Settings(weights_dir=tiny_weights, steps=2, device="cpu", dtype="bfloat16"))
    out = service.predict(tagged(tmp_path, "@woman in @park", ["woman", "park"], "1080p", "4:3", seed=3))
    assert Image.open(out).size == OUTPUT_SIZES["1080p"]["4:3"]
    leaks = half_precision_leaks(service, torch.bfloat16)
    assert not leaks, leaks[:5]


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


def test_setup_downloads_missing_weights_into_the_folder_then_loads(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The hub is replaced by a local copy of the tiny weights (no network in tests); the rest is the
    real setup path: what is missing is fetched into WEIGHTS_DIR, in its layout, then loaded."""
    fetched: list[str] = []

    def fake_snapshot_download(
        repo_id: str, allow_patterns: list[str], local_dir: Path | None = None, **kw: object
    ) -> str:
        if kw.get("local_files_only"):  # the local Hugging Face cache's lookup (tests/test_download.py)
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        repo = next(r for r in ALL_REPOS if r.repo_id == repo_id)
        shutil.copytree(tiny_weights / repo.folder, local_dir, dirs_exist_ok=True)
        fetched.append(repo_id)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    volume = tmp_path / "weights"
    shutil.copytree(tiny_weights / SDXL_VAE_FP16_FIX.folder, volume / SDXL_VAE_FP16_FIX.folder)  # one present
    with pytest.raises(MissingWeightsError):
        build_service(Settings(weights_dir=volume, device="cpu", download_weights=False))
    assert fetched == []
    build_service(Settings(weights_dir=volume, device="cpu", steps=1))
    assert fetched == [r.repo_id for r in ALL_REPOS if r is not SDXL_VAE_FP16_FIX]
    logs = capsys.readouterr().out
    assert f"Weights missing in {volume}: downloading them" in logs
    assert f"{SDXL_VAE_FP16_FIX.repo_id}: present in" in logs
    # The volume is complete now: the next start downloads nothing.
    build_service(Settings(weights_dir=volume, device="cpu", steps=1))
    assert len(fetched) == 2


def test_turbo_fuses_sdxl_lightning_runs_4_steps_without_cfg(
    service: ImageService, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    turbo = build_service(Settings(weights_dir=tiny_weights, device="cpu", turbo=True, steps=30, guidance=7.0))
    assert turbo.settings.effective_steps == 4 and turbo.settings.effective_guidance == 0.0
    assert turbo.pipe.scheduler.config.timestep_spacing == "trailing"
    # Without turbo, SDXL's own sampler as its repository configures it ("leading").
    saved = json.loads((tiny_weights / SDXL_BASE.folder / "scheduler" / "scheduler_config.json").read_text())
    assert service.pipe.scheduler.config.timestep_spacing == saved["timestep_spacing"] == "leading"
    assert turbo.refiner.scheduler is turbo.pipe.scheduler
    # The LoRA is fused into the UNet's weights (not left as extra layers).
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    fused_q = turbo.pipe.unet.get_submodule(name)
    assert type(fused_q) is torch.nn.Linear
    assert not torch.equal(fused_q.weight, service.pipe.unet.get_submodule(name).weight)
    batches: list[int] = []
    forward = turbo.pipe.unet.forward

    def count(sample: torch.Tensor, *args: object, **kwargs: object) -> object:
        batches.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(turbo.pipe.unet, "forward", count)
    out = turbo.predict(Request(prompt="a fox", resolution="1080p", aspect_ratio="4:3", seed=4))
    with Image.open(out) as image:
        assert image.size == (1440, 1080)
    # 4 base steps + int(4 x 0.35) -> 1 refine step, each one UNet call on a batch of 1 (no CFG).
    assert batches == [1] * 5


def kohya_keys(peft: dict[str, torch.Tensor], sgm_layers_per_block: int | None = None) -> dict[str, torch.Tensor]:
    """The stand-in LoRA (diffusers' PEFT keys) in kohya's layout: `lora_unet_<module path with
    underscores>.lora_down/.lora_up/.alpha`, as diffusers' own converter writes it; with
    `sgm_layers_per_block`, the module paths in the original SGM UNet's names (input_blocks,
    middle_block, output_blocks), as kohya's SDXL trainer writes them."""
    kohya = convert_state_dict_to_kohya(peft)
    if sgm_layers_per_block is None:
        return kohya
    step = sgm_layers_per_block + 1
    renamed = {}
    for key, value in kohya.items():
        parts = key.split("_")  # lora, unet, down, blocks, B, attentions, J, ...
        if key.startswith("lora_unet_down_blocks_"):
            block, layer = int(parts[4]), int(parts[6])
            parts[2:7] = ["input", "blocks", str(block * step + layer + 1), "1"]
        elif key.startswith("lora_unet_up_blocks_"):
            block, layer = int(parts[4]), int(parts[6])
            parts[2:7] = ["output", "blocks", str(block * step + layer), "1"]
        elif key.startswith("lora_unet_mid_block_attentions_0_"):
            parts[2:6] = ["middle", "block", "1"]
        renamed["_".join(parts)] = value
    return renamed


CPU_FP32 = Runtime(device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def turbo_unet_from_the_stand_in(tiny_weights: Path) -> dict[str, torch.Tensor]:
    """The turbo UNet's weights with the stand-in LoRA (PEFT keys) fused, loaded once."""
    return load_pipeline(tiny_weights, CPU_FP32, turbo=True).unet.state_dict()


@pytest.mark.parametrize("layout", ["kohya", "kohya-sgm"])
def test_turbo_fuses_the_lora_alike_from_kohyas_layouts(
    tiny_weights: Path, tmp_path: Path, layout: str, turbo_unet_from_the_stand_in: dict[str, torch.Tensor]
) -> None:
    """The stand-in LoRA is written with diffusers' PEFT keys; the published file may use kohya's
    layout, with diffusers' module names or the original SGM UNet's. diffusers converts either on
    the same call: the fused UNet comes out the same as from the stand-in."""
    expected = turbo_unet_from_the_stand_in
    peft = load_file(tiny_weights / SDXL_LIGHTNING.folder / LIGHTNING_LORA_WEIGHT)
    unet_config = UNet.load_config(tiny_weights / SDXL_BASE.folder / "unet")
    lora = kohya_keys(peft, unet_config["layers_per_block"] if layout == "kohya-sgm" else None)
    assert not any(key.startswith("unet.") for key in lora) and len(lora) == len(peft) * 3 // 2
    fused = load_pipeline(weights_with_lora(tiny_weights, tmp_path, lora), CPU_FP32, turbo=True).unet.state_dict()
    assert fused.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(fused[key], value, rtol=0, atol=1e-6, msg=key)


def weights_with_lora(tiny_weights: Path, tmp_path: Path, lora: dict[str, torch.Tensor]) -> Path:
    """A weights folder: the tiny repositories linked, and `lora` as the turbo LoRA file."""
    weights = tmp_path / "weights"
    for repo in ALL_REPOS:
        (weights / repo.folder).parent.mkdir(parents=True, exist_ok=True)
        (weights / repo.folder).symlink_to(tiny_weights / repo.folder)
    (weights / SDXL_LIGHTNING.folder).mkdir()
    save_file(lora, weights / SDXL_LIGHTNING.folder / LIGHTNING_LORA_WEIGHT)
    return weights


def test_turbo_refuses_a_lora_that_also_holds_text_encoder_weights(tiny_weights: Path, tmp_path: Path) -> None:
    """The turbo LoRA goes into the UNet alone; text-encoder weights would be dropped unapplied."""
    lora = load_file(tiny_weights / SDXL_LIGHTNING.folder / LIGHTNING_LORA_WEIGHT)
    width = CLIPTextConfig.from_pretrained(tiny_weights / SDXL_BASE.folder / "text_encoder").hidden_size
    q_proj = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    lora |= {f"{q_proj}.lora_A.weight": torch.zeros(4, width), f"{q_proj}.lora_B.weight": torch.zeros(width, 4)}
    with pytest.raises(ValueError, match=re.escape(f"{LIGHTNING_LORA_WEIGHT} holds LoRA weights for text_encoder;")):
        load_pipeline(weights_with_lora(tiny_weights, tmp_path, lora), CPU_FP32, turbo=True)


def test_turbo_without_its_lora_names_the_download(tiny_weights: Path, tmp_path: Path) -> None:
    partial = tmp_path / "weights"
    for repo in ALL_REPOS:
        shutil.copytree(tiny_weights / repo.folder, partial / repo.folder)
    with pytest.raises(MissingWeightsError, match=r"ByteDance/SDXL-Lightning.*--turbo"):
        build_service(Settings(weights_dir=partial, device="cpu", turbo=True, download_weights=False))


def test_repeated_prompt_skips_the_text_encoders(service: ImageService) -> None:
    request = Request(prompt="a heron at first light", resolution="720p", aspect_ratio="1:1", seed=6)
    service.predict(request)
    calls = service.text.encoder_calls
    service.predict(Request(**{**request.__dict__, "seed": 7}))
    assert service.text.encoder_calls == calls
    service.predict(Request(**{**request.__dict__, "prompt": "a heron at dusk"}))
    assert service.text.encoder_calls == calls + 1


@pytest.mark.usefixtures("small")
def test_the_image_projection_runs_once_per_pass_with_the_same_image(tiny_weights: Path, tmp_path: Path) -> None:
    gen = build_service(Settings(weights_dir=tiny_weights, steps=4, device="cpu"))
    unet = gen.pipe.unet
    assert isinstance(unet.encoder_hid_proj, ProjectionOncePerPass)
    calls = []
    unet.encoder_hid_proj.image_projection_layers[0].register_forward_hook(lambda *_: calls.append(1))
    request = tagged(tmp_path, "@woman with @dog", ["woman", "dog"], "1080p", "4:3", seed=11)  # base + refine

    once = gen.predict(request)
    assert len(calls) == 2  # the base pass (4 steps) and the refine pass (1 step)
    calls.clear()
    # diffusers' own projection over the same layers: once per UNet call, the same image.
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(list(unet.encoder_hid_proj.image_projection_layers))
    every_step = gen.predict(request)
    assert len(calls) == 5
    assert digest(once) == digest(every_step)


@pytest.mark.parametrize(("prompt", "tags"), [("@woman with @dog", ["woman", "dog"]), ("a woman with a dog", [])])
@pytest.mark.usefixtures("small")
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


@pytest.mark.usefixtures("small")
def test_pipelines_pin_diffusers_execution_device_and_never_walk_the_modules(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The execution device is diffusers' own answer, read once at setup: a prediction never runs
    diffusers' walk over every module (about 12 ms a call on the CPU with SDXL's structure)."""
    walk = DiffusionPipeline._execution_device
    for pipe in (service.pipe, service.refiner):
        assert pipe._execution_device == walk.fget(pipe) == torch.device("cpu")
    walks = []
    monkeypatch.setattr(DiffusionPipeline, "_execution_device", property(lambda p: walks.append(p) or walk.fget(p)))
    service.predict(tagged(tmp_path, "@woman in @park", ["woman", "park"], "1080p", "1:1", seed=3))
    assert walks == []
    with device_looked_up(service.pipe):  # unpinned: diffusers' own again
        assert service.pipe._execution_device == torch.device("cpu") and walks == [service.pipe]


@pytest.mark.usefixtures("small")
def test_attention_reads_each_processor_signature_once_not_at_every_call(
    service: ImageService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = (service.pipe.unet, service.pipe.vae)
    processors = [p for model in models for p in model.attn_processors.values()]
    for processor in processors:  # the names diffusers reads at every call
        assert processor_parameters(type(processor)) == set(inspect.signature(processor.__call__).parameters)
    read = []  # reads of a processor's `__call__` (the pipeline reads other signatures too, once a call)
    signature = inspect.signature

    def counted(obj: object, *args: object, **kwargs: object) -> inspect.Signature:
        if getattr(obj, "__name__", None) == "__call__":
            read.append(obj)
        return signature(obj, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counted)
    processor_parameters.cache_clear()
    request = tagged(tmp_path, "@woman in @park", ["woman", "park"], "1080p", "1:1", seed=3)  # refined: all run

    once = service.predict(request)
    assert 0 < len(read) <= len({type(p) for p in processors})
    # diffusers' own forward on the same modules: one read per attention call, the same image.
    modules = attention_modules(*models)
    for module in modules:
        monkeypatch.delattr(module, "forward")  # the class's forward again (restored at teardown)
    read.clear()
    every_call = service.predict(request)
    assert len(read) >= len(modules)
    assert digest(once) == digest(every_call)


def test_attention_forward_filters_and_warns_as_diffusers_does(monkeypatch: pytest.MonkeyPatch) -> None:
    attn = Attention(query_dim=8, heads=2, dim_head=4, processor=AttnProcessor2_0()).eval()
    hidden = torch.randn(1, 4, 8)
    warnings: list[str] = []
    monkeypatch.setattr(attention_processor.logger, "warning", warnings.append)
    kwargs = {"bogus": 1, "ip_adapter_masks": None}  # one unknown, one diffusers takes quietly

    expected = Attention.forward(attn, hidden, **kwargs)
    got = attention_forward(attn, hidden, **kwargs)
    assert torch.equal(got, expected)
    assert len(warnings) == 2 and warnings[0] == warnings[1]
    assert "['bogus']" in warnings[0] and "AttnProcessor2_0" in warnings[0]
