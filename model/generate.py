"""Stage 4: run SDXL with the encoded references and return the image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from model.pipeline import Runtime
from model.references import Encoded
from model.regions import Binding, RegionConfig, RegionState

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationInputs:
    """Everything one generation needs, already validated."""

    prompt: str  # the encoders' text: @tags already rewritten to their words
    width: int
    height: int
    seed: int
    references: Encoded
    bindings: list[Binding]  # one per reference, in request order
    region_config: RegionConfig
    steps: int
    guidance: float
    ip_adapter_scale: float


def generate(
    pipe: StableDiffusionXLPipeline,
    inputs: GenerationInputs,
    runtime: Runtime,
    on_step: StepCallback | None = None,
) -> tuple[Image.Image, RegionState]:
    """Denoise and decode one image of exactly inputs.width x inputs.height; also the request's
    region state, which says where each tag landed."""
    guidance = inputs.guidance > 1.0
    embeds = inputs.references.ip_adapter_embeds(guidance)
    # 1. Shared pipeline state, set on every request so that no request inherits another's.
    #    Scale 0 with no reference: diffusers' processor then skips the adapter entirely.
    has_references = inputs.references.positive.shape[0] > 0
    pipe.set_ip_adapter_scale(inputs.ip_adapter_scale if has_references else 0.0)

    # Per-request localization state, handed to the processors with the call (never stored on them).
    scale_factor = pipe.vae_scale_factor
    region = RegionState(
        bindings=inputs.bindings,
        config=inputs.region_config,
        steps=inputs.steps,
        latent_hw=(inputs.height // scale_factor, inputs.width // scale_factor),
    )

    def step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        region.end_step()
        if on_step is not None:
            on_step(step + 1, inputs.steps)
        return kwargs

    # 2. Denoise and decode.
    generator = torch.Generator(device=runtime.device).manual_seed(inputs.seed)
    if on_step is not None:
        on_step(0, inputs.steps)
    result = pipe(
        prompt=inputs.prompt,
        width=inputs.width,
        height=inputs.height,
        num_inference_steps=inputs.steps,
        guidance_scale=inputs.guidance,
        ip_adapter_image_embeds=[embeds.to(runtime.device, runtime.dtype)],
        generator=generator,
        callback_on_step_end=step_end,
        cross_attention_kwargs={"region": region} if has_references else None,
        output_type="pil",
    )
    image: Image.Image = result.images[0]
    if image.size != (inputs.width, inputs.height):
        raise RuntimeError(f"generated {image.size}, expected {(inputs.width, inputs.height)}")
    return image, region
