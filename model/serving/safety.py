"""The optional output check (GEN4_SAFETY_CHECKER=1): Stable Diffusion's safety checker.

diffusers' StableDiffusionSafetyChecker, with CompVis's weights: a CLIP ViT-L/14 image embedding
compared with 17 concept embeddings (and 3 "special care" ones), each against its own threshold.
It runs on the finished image, after decoding and before anything is written; a flagged image
fails the prediction with the message Replicate's Stable Diffusion models give, and no file is
written. Loaded from the weights folder only (model/engine/weights.py, SAFETY_CHECKER).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion import safety_checker as diffusers_safety
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPImageProcessorPil

from model.engine.pipeline import MissingWeightsError, Runtime, without_progress_bars
from model.engine.weights import SAFETY_CHECKER

# Replicate's Stable Diffusion models (cog-sdxl and its kin) fail a prediction with these words.
FLAGGED_MESSAGE = "NSFW content detected. Try running it again, or try a different prompt."


# diffusers warns that "a black image will be returned instead": here the prediction fails instead,
# and the prediction's logs should not say otherwise.
diffusers_safety.logger.setLevel(logging.ERROR)


class UnsafeOutputError(Exception):
    """The safety checker flagged the output; the prediction fails and nothing is written."""


@dataclass(frozen=True)
class Verdict:
    """One image's check: flagged or not, and how long the check took."""

    flagged: bool
    seconds: float


class SafetyChecker:
    """The checker loaded from `weights_dir`, on the runtime's device and dtype."""

    def __init__(self, weights_dir: Path, runtime: Runtime) -> None:
        folder = weights_dir / SAFETY_CHECKER.folder
        if not (folder / SAFETY_CHECKER.marker).is_file():
            raise MissingWeightsError(
                f"GEN4_SAFETY_CHECKER is on but {folder / SAFETY_CHECKER.marker} is missing; run "
                "scripts/download_weights.py --safety-checker, or leave GEN4_DOWNLOAD_WEIGHTS on"
            )
        with without_progress_bars():
            model = StableDiffusionSafetyChecker.from_pretrained(folder, dtype=runtime.dtype)
        self.model = model.to(runtime.device).eval()
        size = self.model.config.vision_config.image_size
        # CompVis's preprocessor_config.json says the same (shortest side to 224, centre crop 224,
        # CLIP's mean and std); built here on the PIL backend, as the reference encoder's is.
        self.processor = CLIPImageProcessorPil(size=size, crop_size=size)
        self.runtime = runtime

    @torch.inference_mode()
    def check(self, image: Image.Image) -> Verdict:
        """Whether the image shows any of the checker's concepts."""
        started = time.perf_counter()
        pixels = self.processor(image.convert("RGB"), return_tensors="pt").pixel_values
        pixels = pixels.to(self.runtime.device, self.runtime.dtype)
        # `images` is only blacked out in place where flagged; a 1x1 stand-in avoids copying the output.
        _, flagged = self.model(clip_input=pixels, images=[np.zeros((1, 1, 3))])
        return Verdict(flagged=bool(flagged[0]), seconds=time.perf_counter() - started)

    def require_safe(self, image: Image.Image) -> float:
        """Raise UnsafeOutputError when the image is flagged; else return the check's seconds."""
        verdict = self.check(image)
        if verdict.flagged:
            raise UnsafeOutputError(FLAGGED_MESSAGE)
        return verdict.seconds
