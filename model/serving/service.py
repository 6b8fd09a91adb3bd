"""The one entry point predict.py calls: a request in, an image file out.

request -> validated request -> @tag parsing -> reference encoding (cached) -> generation -> file.
User-facing progress goes to stdout on purpose: Cog puts it in the prediction's logs, where
Replicate's model shows the same lines.
"""

from __future__ import annotations

import gc
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from model.contract.cache import LRUCache
from model.contract.images import image_bytes
from model.contract.prompt import parse_prompt
from model.contract.request import Request, ValidRequest, validate_request
from model.engine.generate import Generation, GenerationInputs, Stopwatch, generate
from model.engine.graphs import UNetGraphs, install_unet_graphs
from model.engine.pipeline import (
    MissingWeightsError,
    Runtime,
    compile_blocks,
    img2img_from,
    load_pipeline,
    pick_runtime,
)
from model.engine.placement.binding import Binding, RegionConfig, bind_references
from model.engine.placement.processors import install_processors
from model.engine.placement.report import coverage_lines
from model.engine.plan import PLANS, Plan, plan_for
from model.engine.references import Encoded, ReferenceEncoder
from model.engine.text import TextEmbeds, TextEncoder
from model.engine.tokens import layout, mention_positions
from model.engine.weights import missing_repos, weights_label
from model.serving.download import download_missing
from model.serving.logs import say
from model.serving.output import OutputWriter, make_masks_dir, write_mask_image
from model.serving.settings import Settings, settings_from_env
from model.serving.warmup import WarmupJob, warmup_jobs, warmup_steps

log = logging.getLogger(__name__)


StopCheck = Callable[[], bool]
# The warm-up's reference: what it looks like does not matter, only how many there are.
WARMUP_IMAGE = Image.new("RGB", (64, 64), "grey")


class Canceled(Exception):  # noqa: N818 - the state's name, as Cog reports it
    """The prediction was canceled between two denoising steps."""


def stop_on(should_stop: StopCheck | None) -> Callable[[int, int], None] | None:
    """A step callback that ends the generation with Canceled between two steps when asked to."""
    if should_stop is None:
        return None

    def check(done: int, total: int) -> None:
        if done and should_stop():
            raise Canceled(f"canceled after {done} of {total} denoising steps")

    return check


class Progress:
    """Prints denoising progress as whole percentages, as Replicate's logs show it, and stops the
    loop between two steps when asked to."""

    def __init__(self, should_stop: StopCheck | None = None, every: int = 10) -> None:
        self.stop = stop_on(should_stop)
        self.every = every
        self.last = -every

    def __call__(self, done: int, total: int) -> None:
        if self.stop is not None:
            self.stop(done, total)
        percent = 100 * done // total
        if percent - self.last >= self.every or done == total:
            self.last = percent
            say(f"{percent}%")


class Generator:
    """The loaded model and its caches; one per server process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Runtime = pick_runtime(settings.device, settings.dtype)
        if settings.download_weights and missing_repos(settings.weights_dir, settings.turbo):
            say(f"Weights missing in {settings.weights_dir}: downloading them (mount it as a volume to keep them)")
            try:
                download_missing(settings.weights_dir, say=say, turbo=settings.turbo)
            except Exception as exc:  # the hub's many failure types: say what to do instead
                raise MissingWeightsError(
                    f"could not download the weights into {settings.weights_dir} ({type(exc).__name__}: {exc}); "
                    "run scripts/download_weights.py where the Hugging Face hub is reachable and mount the folder"
                ) from exc
        started = time.perf_counter()
        self.pipe = load_pipeline(settings.weights_dir, self.runtime, turbo=settings.turbo)
        self.refiner = img2img_from(self.pipe)
        self.text = TextEncoder(self.pipe)
        self.encoder = ReferenceEncoder(
            self.pipe.image_encoder,
            self.pipe.feature_extractor,
            identity=f"{settings.weights_dir.resolve()}:{self.runtime.dtype}",
            capacity=settings.reference_cache_size,
        )
        self.encoder.negative()  # computed once, at setup
        # Decoded references by their file's bytes, so that a repeated file skips decoding.
        self.decoded: LRUCache[Image.Image] | None = (
            LRUCache(settings.decoded_cache_mb * 2**20, weigh=image_bytes) if settings.decoded_cache_mb else None
        )
        self.region_config = RegionConfig()
        install_processors(self.pipe.unet, self.region_config, fuse_self_attention=settings.fuse_qkv)
        # After the processors: a graph records the kernels of the processors installed now.
        self.graphs: UNetGraphs | None = None
        if settings.cuda_graphs and not settings.compile and self.runtime.device.type == "cuda":
            self.graphs = install_unet_graphs(self.pipe.unet)
        # Generated while the server is idle (model/serving/warmup.py): after the graphs, which it fills.
        self.idle_warmup = warmup_jobs(settings.warmup_entries(graphs=self.graphs is not None))
        self.idle_warmup_steps = warmup_steps(settings.effective_steps, self.region_config.warmup_fraction)
        self.output = OutputWriter(settings.output_format)
        if settings.masks_dir is not None:
            make_masks_dir(settings.masks_dir)  # at setup: a bad folder fails here, not in a request
        self.last_timings: dict[str, float] = {}  # seconds per stage of the latest prediction
        self.compile_s: float | None = None
        if settings.compile:
            blocks = compile_blocks(self.pipe.unet, self.pipe.vae)
            compiling = time.perf_counter()
            self.warm_up([WarmupJob(plan, 1, 1) for plan in dict.fromkeys(PLANS.values())], steps=2)
            self.compile_s = time.perf_counter() - compiling
            say(f"Compiled {blocks} UNet and VAE blocks; every output size warmed up in {self.compile_s:.1f}sec")
        label = weights_label(settings.weights_dir)
        kind = "real weights" if label == "real" else f"{label.upper()} weights (stand-ins: images are noise)"
        if settings.turbo:
            kind += ", TURBO (SDXL-Lightning 4-step LoRA, no CFG)"
        say(
            f"Loaded SDXL + IP-Adapter Plus with {kind} from {settings.weights_dir} on "
            f"{self.runtime.device} in {time.perf_counter() - started:.1f}sec"
        )

    def warm_up(self, jobs: list[WarmupJob], steps: int, should_stop: StopCheck | None = None) -> int:
        """Generate each job once (no output file, no prediction logs), so that what is compiled or
        captured on first use meets those shapes now rather than in a user's request. Returns how
        many jobs ran to their end: fewer when `should_stop` said stop between two steps."""
        for done, job in enumerate(jobs):
            prompt = parse_prompt(job.prompt)
            positions = mention_positions(prompt, self.pipe.tokenizer)
            references = self.encoder.encode([WARMUP_IMAGE] * job.references)
            bindings = bind_references(job.tags, prompt, positions)
            inputs = self._inputs(self.text.encode(prompt.text), job.plan, 0, references, bindings, steps)
            try:
                clock = Stopwatch(self.runtime.device)
                generate(self.pipe, self.refiner, inputs, self.runtime, clock, on_step=stop_on(should_stop))
            except Canceled:
                # No release_memory (gc.collect, empty_cache) here: the prediction that stopped the
                # warm-up is waiting, and reuses the blocks the allocator keeps.
                return done
            except Exception:
                self.release_memory()  # an out-of-memory warm-up must not leave the next request short
                raise
        return len(jobs)

    @classmethod
    def from_env(cls) -> Generator:
        return cls(settings_from_env())

    def predict(self, request: Request, should_stop: StopCheck | None = None) -> Path:
        """Run one request end to end and return the output file."""
        return self.run(self.validate(request), should_stop)

    def validate(self, request: Request) -> ValidRequest:
        """Every check, references decoded, before any model work (no GPU: runs while queued)."""
        return validate_request(request, self.decoded)

    def run(self, valid: ValidRequest, should_stop: StopCheck | None = None) -> Path:
        """Generate a validated request. `should_stop` is checked after every denoising step:
        when it says so, the prediction ends with Canceled within one step."""
        seed = valid.seed if valid.seed is not None else secrets.randbelow(2**32)
        plan = plan_for(valid.resolution, valid.aspect_ratio)
        say(f"Using seed: {seed}")
        tags = [r.tag for r in valid.references if r.tag]
        if tags:
            say(f"Using reference tags: {', '.join(tags)}")
        say(
            f"Generating image with ratio {valid.width}:{valid.height} "
            f"({valid.aspect_ratio} at {valid.resolution} resolution)"
        )
        say(plan.describe())
        started = time.perf_counter()
        clock = Stopwatch(self.runtime.device)
        try:
            generation = self._generate(valid, plan, seed, clock, should_stop)
        except Canceled:
            self.release_memory()
            raise
        except torch.OutOfMemoryError as exc:
            # Give the memory back so that the next request can run, and say what happened.
            self.release_memory()
            raise RuntimeError(
                f"out of GPU memory while generating {valid.width}x{valid.height} "
                f"with {len(valid.references)} reference(s); the server is still ready ({exc})"
            ) from None
        with clock.stage("write output"):
            path = self.output.write(generation.image, seed)
            if self.settings.writes_masks:
                self._write_masks(generation, path)
        self.last_timings = clock.seconds
        say(f"Generated image in {time.perf_counter() - started:.1f}sec")
        return path

    def _generate(
        self, valid: ValidRequest, plan: Plan, seed: int, clock: Stopwatch, should_stop: StopCheck | None
    ) -> Generation:
        # 2. Encode the references (cached).
        with clock.stage("reference encoding"):
            encoded = self.encoder.encode([r.image for r in valid.references])
        if valid.references:
            say(f"Reference encodings: {encoded.hits} cached, {encoded.misses} encoded")
        # 3. Bind each reference to its @tag's tokens (the same positions in both SDXL tokenizers,
        #    which share CLIP's vocabulary and differ only in padding), and encode the text (cached).
        positions = mention_positions(valid.prompt, self.pipe.tokenizer)
        bindings = bind_references([r.tag for r in valid.references], valid.prompt, positions)
        self._say_unread(valid, positions)
        with clock.stage("text encoding"):
            text = self.text.encode(valid.prompt.text)
        # 4. Denoise and decode, following the size's plan.
        say("Generating...")
        inputs = self._inputs(text, plan, seed, encoded, bindings, self.settings.effective_steps)
        generation = generate(self.pipe, self.refiner, inputs, self.runtime, clock, on_step=Progress(should_stop))
        if generation.tiled_decode:
            say("VAE decode ran out of memory whole; decoded in tiles instead")
        for line in coverage_lines(generation.regions[-1]):
            say(line)
        return generation

    def _say_unread(self, valid: ValidRequest, positions: dict[str, tuple[int, ...]]) -> None:
        """Say what of a very long prompt the text encoders do not read, and which mentions that
        turns into references for the whole image."""
        text = layout(self.pipe.tokenizer, valid.prompt.text)
        if text.read == len(text.ids):
            return
        say(f"Prompt is {len(text.ids)} tokens; the text encoders read the first {text.read}")
        for tag in valid.prompt.mentioned_tags():
            if tag not in positions:
                say(f"@{tag} is mentioned only after that, so its reference applies to the whole image")

    def _inputs(
        self, text: TextEmbeds, plan: Plan, seed: int, references: Encoded, bindings: list[Binding], steps: int
    ) -> GenerationInputs:
        """One generation's inputs: the request's parts, and the rest from the server's settings."""
        return GenerationInputs(
            text=text,
            plan=plan,
            seed=seed,
            references=references,
            bindings=bindings,
            region_config=self.region_config,
            steps=steps,
            guidance=self.settings.effective_guidance,
            ip_adapter_scale=self.settings.ip_adapter_scale,
            refine_strength=self.settings.refine_strength,
            vae_tiling=self.settings.vae_tiling,
        )

    def _write_masks(self, generation: Generation, output: Path) -> None:
        region = generation.regions[-1]
        masks = region.final_masks()
        if masks is None:
            say("No tag masks to write: no tagged reference was placed")
            return
        labels = [f"@{b.tag} ({b.kind})" if b.tag else f"reference {b.index + 1} (global)" for b in region.bindings]
        folder = self.settings.masks_dir or output.parent
        path = write_mask_image(generation.image, masks.numpy(), labels, folder / f"{output.stem}.masks.png")
        say(f"Tag masks written to {path}")

    def stats(self) -> dict[str, int]:
        """Cache sizes and bounds, published with the queue's state (for the soak test)."""
        return {
            "reference_cache": len(self.encoder.cache),
            "reference_cache_capacity": self.encoder.cache.capacity,
            "text_cache": len(self.text.cache),
            "text_cache_capacity": self.text.cache.capacity,
            "decoded_cache_bytes": self.decoded.weight if self.decoded else 0,
            "decoded_cache_capacity_bytes": self.decoded.capacity if self.decoded else 0,
        }

    def release_memory(self) -> None:
        gc.collect()
        if self.runtime.device.type == "cuda":
            torch.cuda.empty_cache()
