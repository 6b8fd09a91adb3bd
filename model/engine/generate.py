"""Stage 5 of a prediction (model/serving/service.py): run SDXL with the encoded text and
references, following the size's plan.

Base pass at about 1 MP with the target's aspect ratio, then the exact size: an img2img refine
pass (upscaled base, same text, same references, same tag masks) when the target is larger, a
Lanczos downscale when it is smaller. See model/engine/plan.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from model.engine.options import VaeTiling
from model.engine.pipeline import Runtime
from model.engine.placement.binding import Binding, RegionConfig
from model.engine.placement.state import RegionState
from model.engine.plan import Plan, cover_box, refine_steps
from model.engine.references import Encoded
from model.engine.resize import cover_resize
from model.engine.text import TextEmbeds

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationConfig:
    """How a server generates, the same for every request: built once from its settings."""

    steps: int  # of the base pass
    guidance: float  # classifier-free guidance; 1.0 or less: none (turbo)
    ip_adapter_scale: float
    refine_strength: float
    vae_tiling: VaeTiling
    region: RegionConfig = field(default_factory=RegionConfig)


@dataclass(frozen=True)
class GenerationInputs:
    """One request's generation: its own parts, already validated, and the server's config."""

    text: TextEmbeds  # the prompt with @tags rewritten to their words, encoded
    plan: Plan
    seed: int
    references: Encoded
    bindings: list[Binding]  # one per reference, in request order
    config: GenerationConfig

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps(self.config.steps, self.config.refine_strength)


@dataclass
class Stopwatch:
    """Seconds per stage. On CUDA it synchronises at stage boundaries only (a few times per
    request), never inside the step loop, so that each stage's time is its own."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        started = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


@dataclass(frozen=True)
class Generation:
    """The image, each pass's region state (base first), and whether the VAE fell back to tiles."""

    image: Image.Image
    regions: list[RegionState]
    tiled_decode: bool


def set_vae_tiling(vae: AutoencoderKL, on: bool) -> None:
    """Shared VAE state, so it is set explicitly every time it matters."""
    if on:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


@torch.inference_mode()
def decode(
    vae: AutoencoderKL, processor: VaeImageProcessor, latents: torch.Tensor, tiling: VaeTiling
) -> tuple[Image.Image, bool]:
    """Latents to an image (see decode_pixels)."""
    pixels, tiled = decode_pixels(vae, latents, tiling)
    return to_pil(processor, pixels), tiled


@torch.inference_mode()
def decode_pixels(vae: AutoencoderKL, latents: torch.Tensor, tiling: VaeTiling) -> tuple[torch.Tensor, bool]:
    """Latents to the VAE's pixels in [-1, 1] on its device, in the VAE's own dtype: the fp16-fix
    VAE needs no fp32 upcast. With tiling "auto", a decode that runs out of memory is retried in
    tiles (2 MP on a small card)."""
    config = vae.config
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    latents = latents.to(vae.dtype)
    tiled = tiling == VaeTiling.ALWAYS
    try:
        set_vae_tiling(vae, tiled)
        try:
            pixels = vae.decode(latents, return_dict=False)[0]
        except torch.OutOfMemoryError:
            if tiling != VaeTiling.AUTO:
                raise
            if latents.device.type == "cuda":
                torch.cuda.empty_cache()
            tiled = True
            set_vae_tiling(vae, True)
            pixels = vae.decode(latents, return_dict=False)[0]
    finally:
        set_vae_tiling(vae, tiling == VaeTiling.ALWAYS)
    return pixels, tiled


def to_pil(processor: VaeImageProcessor, pixels: torch.Tensor) -> Image.Image:
    """The first decoded image as PIL, with the arithmetic of diffusers' postprocess ("pil") but on
    the tensor's device: only the 8-bit image crosses to the host, not the half-precision tensor
    that diffusers converts to float32 and rounds with numpy on the CPU (1.5 MP at 1080p)."""
    image = processor.postprocess(pixels[:1], output_type="pt")  # denormalised to [0, 1], same device
    image = image.float().mul(255).round().to(torch.uint8)
    return Image.fromarray(image[0].permute(1, 2, 0).cpu().numpy())


def resample(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Lanczos to cover `size`, then a centre crop: the base's aspect differs by a few percent at
    most, which this crops instead of stretching."""
    resized, box = cover_box(image.size, size)
    return image.resize(resized, Image.Resampling.LANCZOS).crop(box)


def upscale(
    processor: VaeImageProcessor, pixels: torch.Tensor, size: tuple[int, int], on_device: bool
) -> Image.Image | torch.Tensor:
    """The decoded base brought to cover `size` and cropped to it, for the refine pass: on the
    pixels' device ([1, 3, h, w] in [0, 1], which diffusers' img2img takes as is), or through
    Pillow. On a GPU the device saves the host's work (the 8-bit copy back, Pillow's Lanczos, and
    img2img's conversion of the picture into a float tensor again); on a CPU, Pillow's integer
    Lanczos is the faster (docs/performance.md)."""
    if on_device:
        return cover_resize(processor.postprocess(pixels[:1], output_type="pt"), size)
    return resample(to_pil(processor, pixels), size)


def img2img_steps(steps: int, strength: float) -> int:
    """The num_inference_steps to give diffusers' img2img so that it runs int(steps * strength)
    steps, and at least one (it refuses zero)."""
    return steps if int(steps * strength) >= 1 else math.ceil(1 / strength)


@torch.inference_mode()
def generate(
    pipe: StableDiffusionXLPipeline,
    refiner: StableDiffusionXLImg2ImgPipeline,
    inputs: GenerationInputs,
    runtime: Runtime,
    clock: Stopwatch,
    on_step: StepCallback | None = None,
    upscale_on_device: bool | None = None,
) -> Generation:
    """Denoise and decode one image of exactly the plan's target size. The refine pass's upscale
    runs on the device on CUDA, through Pillow on a CPU, unless `upscale_on_device` says."""
    plan = inputs.plan
    # 1. Shared pipeline state, set on every request so that no request inherits another's.
    #    Scale 0 with no reference: the adapter is then skipped entirely (the region state still
    #    goes with the call: with no reference it only keeps each layer's text keys and values).
    config = inputs.config
    has_references = inputs.references.positive.shape[0] > 0
    pipe.set_ip_adapter_scale(config.ip_adapter_scale if has_references else 0.0)
    set_vae_tiling(pipe.vae, config.vae_tiling == VaeTiling.ALWAYS)
    embeds = [inputs.references.ip_adapter_embeds(config.guidance > 1.0).to(runtime.device, runtime.dtype)]
    total = inputs.total_steps
    done = 0

    def pass_kwargs(region: RegionState, steps: int) -> dict[str, Any]:
        """What both passes share: text, references, guidance, seed, progress, tag masks."""

        def step_end(_pipe: Any, _step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal done
            region.end_step()
            done += 1
            if on_step is not None:
                on_step(done, total)
            return kwargs

        return {
            **inputs.text.as_kwargs(),
            "num_inference_steps": steps,
            "guidance_scale": config.guidance,
            "ip_adapter_image_embeds": embeds,
            "generator": generator,
            "callback_on_step_end": step_end,
            "cross_attention_kwargs": {"region": region},
            "output_type": "latent",
        }

    generator = torch.Generator(device=runtime.device).manual_seed(inputs.seed)
    if on_step is not None:
        on_step(0, total)
    scale = pipe.vae_scale_factor

    # 2. Base pass near 1 MP. Micro-conditioning says what it is: an image of the base size.
    (bw, bh), (tw, th) = plan.base, plan.target
    base_region = RegionState(
        bindings=inputs.bindings, config=config.region, steps=config.steps, latent_hw=(bh // scale, bw // scale)
    )
    with clock.stage("base denoise"):
        latents = pipe(
            width=bw, height=bh, original_size=(bh, bw), target_size=(bh, bw), **pass_kwargs(base_region, config.steps)
        ).images
    with clock.stage("vae decode"):
        pixels, tiled = decode_pixels(pipe.vae, latents, config.vae_tiling)
    if not plan.refine:
        # 3a. Smaller target: a high-quality downscale of the 8-bit image is all it needs.
        with clock.stage("resize"):
            image = resample(to_pil(pipe.image_processor, pixels), plan.target)
        return Generation(image=image, regions=[base_region], tiled_decode=tiled)

    # 3b. Larger target: upscale, then re-denoise lightly at the exact size with the same text,
    #     references and the base pass's tag masks (the layout is settled, so no warm-up).
    if upscale_on_device is None:
        upscale_on_device = runtime.device.type == "cuda"
    with clock.stage("resize"):
        upscaled = upscale(pipe.image_processor, pixels, plan.target, upscale_on_device)
    steps = refine_steps(config.steps, config.refine_strength)
    refine_region = RegionState.carried(base_region, latent_hw=(th // scale, tw // scale), steps=steps)
    with clock.stage("refine"):
        latents = refiner(
            image=upscaled,
            strength=config.refine_strength,
            original_size=(th, tw),
            target_size=(th, tw),
            **pass_kwargs(refine_region, img2img_steps(config.steps, config.refine_strength)),
        ).images
    with clock.stage("vae decode"):
        image, tiled_refine = decode(pipe.vae, pipe.image_processor, latents, config.vae_tiling)
    if image.size != plan.target:
        raise RuntimeError(f"generated {image.size}, expected {plan.target}")
    return Generation(image=image, regions=[base_region, refine_region], tiled_decode=tiled or tiled_refine)
