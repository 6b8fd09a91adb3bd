"""The one entry point predict.py calls: a request in, an image file out.

request -> validated request -> @tag parsing -> reference encoding (cached) -> generation -> file.
User-facing progress goes to stdout on purpose: Cog puts it in the prediction's logs, where
Replicate's model shows the same lines.
"""

from __future__ import annotations

import gc
import logging
import secrets
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from model.generate import GenerationInputs, generate
from model.output import OutputWriter
from model.pipeline import Runtime, load_pipeline, pick_runtime
from model.references import ReferenceEncoder
from model.regions import RegionConfig, bind_references, install_processors
from model.request import Request, ValidRequest, validate_request
from model.settings import Settings, settings_from_env
from model.tokens import mention_positions
from model.weights import is_tiny

log = logging.getLogger(__name__)


def say(line: str) -> None:
    """One line of the prediction's logs."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Progress:
    """Prints denoising progress as whole percentages, as Replicate's logs show it."""

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.last = -every

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total
        if percent - self.last >= self.every or done == total:
            self.last = percent
            say(f"{percent}%")


class Generator:
    """The loaded model and its caches; one per server process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Runtime = pick_runtime(settings.device)
        started = time.perf_counter()
        self.pipe = load_pipeline(settings.weights_dir, self.runtime)
        self.tiny = is_tiny(settings.weights_dir)
        self.encoder = ReferenceEncoder(
            self.pipe.image_encoder,
            self.pipe.feature_extractor,
            identity=f"{settings.weights_dir.resolve()}:{self.runtime.dtype}",
            capacity=settings.reference_cache_size,
        )
        self.encoder.negative()  # computed once, at setup
        self.region_config = RegionConfig()
        install_processors(self.pipe.unet, self.region_config)
        self.output = OutputWriter(settings.output_format)
        kind = "TINY RANDOM weights (test stand-ins: images are noise)" if self.tiny else "real weights"
        say(
            f"Loaded SDXL + IP-Adapter Plus with {kind} from {settings.weights_dir} on "
            f"{self.runtime.device} in {time.perf_counter() - started:.1f}sec"
        )

    @classmethod
    def from_env(cls) -> Generator:
        return cls(settings_from_env())

    def predict(self, request: Request) -> Path:
        """Run one request end to end and return the output file."""
        # 1. Validate everything, references decoded, before any model work.
        valid = validate_request(request)
        seed = valid.seed if valid.seed is not None else secrets.randbelow(2**32)
        say(f"Using seed: {seed}")
        tags = [r.tag for r in valid.references if r.tag]
        if tags:
            say(f"Using reference tags: {', '.join(tags)}")
        say(
            f"Generating image with ratio {valid.width}:{valid.height} "
            f"({valid.aspect_ratio} at {valid.resolution} resolution)"
        )
        started = time.perf_counter()
        try:
            image = self._generate(valid, seed)
        except torch.OutOfMemoryError as exc:
            # Give the memory back so that the next request can run, and say what happened.
            self.release_memory()
            raise RuntimeError(
                f"out of GPU memory while generating {valid.width}x{valid.height} "
                f"with {len(valid.references)} reference(s); the server is still ready ({exc})"
            ) from None
        say(f"Generated image in {time.perf_counter() - started:.1f}sec")
        return self.output.write(image, seed)

    def _generate(self, valid: ValidRequest, seed: int) -> Image.Image:
        # 2. Encode the references (cached).
        encoded = self.encoder.encode([r.image for r in valid.references])
        if valid.references:
            say(f"Reference encodings: {encoded.hits} cached, {encoded.misses} encoded")
        # 3. Bind each reference to its @tag's tokens (the same positions in both SDXL tokenizers,
        #    which share CLIP's vocabulary and differ only in padding).
        positions = mention_positions(valid.prompt, self.pipe.tokenizer)
        bindings = bind_references([r.tag for r in valid.references], valid.prompt, positions)
        # 4. Denoise and decode.
        say("Generating...")
        inputs = GenerationInputs(
            prompt=valid.prompt.text,
            width=valid.width,
            height=valid.height,
            seed=seed,
            references=encoded,
            bindings=bindings,
            region_config=self.region_config,
            steps=self.settings.steps,
            guidance=self.settings.guidance,
            ip_adapter_scale=self.settings.ip_adapter_scale,
        )
        image, region = generate(self.pipe, inputs, self.runtime, on_step=Progress())
        shares = region.shares()
        for binding in bindings:
            if binding.tag and binding.kind != "global" and binding.index in shares:
                say(f"@{binding.tag} covers {shares[binding.index]:.0%} of the image ({binding.kind})")
        return image

    def release_memory(self) -> None:
        gc.collect()
        if self.runtime.device.type == "cuda":
            torch.cuda.empty_cache()
