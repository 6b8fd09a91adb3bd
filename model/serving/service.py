"""The loaded model's per-request path: a validated request in, an image file out.

A prediction's stages, numbered once for the whole server:
1. validate the fields and decode the references (model/contract/request.py; while queued),
2. wait for the GPU, first in first out (model/serving/queue.py),
3. encode the references, cached (model/engine/references.py),
4. read the prompt: bind each reference to its @tag's tokens and encode the text, cached
   (model/engine/tokens.py, placement/binding.py, text.py),
5. denoise and decode, following the size's plan (model/engine/generate.py),
6. write the output file (model/serving/output.py).
Stages 3 to 6 run here. `build_service` (model/serving/setup.py) loads the model at setup.
"""

from __future__ import annotations

import gc
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from model.contract.cache import LRUCache
from model.contract.prompt import ParsedPrompt, parse_prompt
from model.contract.request import Request, ValidRequest, validate_request
from model.engine.generate import Generation, GenerationConfig, GenerationInputs, Stopwatch, generate
from model.engine.graphs import UNetGraphs
from model.engine.pipeline import Runtime, SDXLImg2ImgPipeline, SDXLPipeline
from model.engine.placement.binding import Binding, bind_references
from model.engine.placement.report import coverage_lines
from model.engine.plan import Plan, plan_for
from model.engine.references import Encoded, ReferenceEncoder
from model.engine.text import TextEmbeds, TextEncoder
from model.engine.tokens import PromptTokens, read_prompt
from model.serving.fetch import FetchPolicy, fetch_references
from model.serving.logs import say
from model.serving.mask_log import masks_line
from model.serving.output import OutputWriter, write_mask_image
from model.serving.safety import SafetyChecker
from model.serving.settings import Settings
from model.serving.warmup import WarmupJob

StopCheck = Callable[[], bool]
# The warm-up's reference: what it looks like does not matter, only how many there are.
WARMUP_IMAGE = Image.new("RGB", (64, 64), "grey")


class Canceled(Exception):  # noqa: N818 - the state's name, as Cog reports it
    """The prediction was canceled between two denoising steps."""


def stop_on(should_stop: StopCheck | None) -> Callable[[int, int], None] | None:
    """A step callback that ends the generation with Canceled before the first step or between two
    steps when asked to (`generate` calls it with 0 before the first step)."""
    if should_stop is None:
        return None

    def check(done: int, total: int) -> None:
        if should_stop():
            said = f"after {done} of {total} denoising steps" if done else "before generating"
            raise Canceled(f"canceled {said}")

    return check


class Progress:
    """Prints denoising progress as whole percentages, as Replicate's logs show it, and stops the
    loop before the first step or between two steps when asked to."""

    def __init__(self, should_stop: StopCheck | None = None, every: int = 10) -> None:
        self.stop = stop_on(should_stop)
        self.every = every
        self.last = -every
        self.done = 0  # denoising steps run so far

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        if self.stop is not None:
            self.stop(done, total)
        percent = 100 * done // total
        if percent - self.last >= self.every or done == total:
            self.last = percent
            say(f"{percent}%")


@dataclass(frozen=True)
class Prepared:
    """One generation's request-side parts, each computed once: the plan, how the text encoders
    read the prompt, and where each reference applies."""

    plan: Plan
    prompt: ParsedPrompt
    tokens: PromptTokens
    bindings: list[Binding]


@dataclass
class ImageService:
    """The loaded model, its caches and the server's generation config: one per server process.
    Built by `model.serving.setup.build_service`; `validate` and `run` serve each request."""

    settings: Settings
    runtime: Runtime
    pipe: SDXLPipeline
    refiner: SDXLImg2ImgPipeline  # the same modules as `pipe`, as img2img
    text: TextEncoder
    encoder: ReferenceEncoder
    decoded: LRUCache[Image.Image] | None  # decoded references by their file's bytes
    config: GenerationConfig
    output: OutputWriter
    safety: SafetyChecker | None = None  # GEN4_SAFETY_CHECKER
    graphs: UNetGraphs | None = None
    # Generated while the server is idle (model/serving/warmup.py), at this many steps.
    idle_warmup: list[WarmupJob] = field(default_factory=list)
    idle_warmup_steps: int = 0
    compile_s: float | None = None  # GEN4_COMPILE's compile and warm-up at setup
    last_timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, latest prediction
    # Denoising steps run for predictions since setup (published with the queue's state): how a test
    # on the real server sees that a canceled prediction never generated, whatever its logs say
    # (coglet routes no log line of a prediction after it reported it canceled).
    steps_run: int = 0

    def predict(self, request: Request, should_stop: StopCheck | None = None) -> Path:
        """Run one request end to end and return the output file."""
        return self.run(self.validate(request, should_stop), should_stop)

    def validate(self, request: Request, should_stop: StopCheck | None = None) -> ValidRequest:
        """Stage 1: every check, references fetched and decoded, before any model work (no GPU:
        runs while queued). `should_stop` stops the references' downloads."""
        policy = FetchPolicy(
            self.settings.reference_max_bytes, self.settings.reference_timeout, self.settings.reference_allow_private
        )
        return validate_request(request, self.decoded, lambda items: fetch_references(items, policy, should_stop))

    def prepare(self, prompt: ParsedPrompt, tags: list[str | None], plan: Plan) -> Prepared:
        """How the encoders read the prompt, and where each reference (by its tag) applies."""
        tokens = read_prompt(prompt, self.pipe.tokenizer)
        return Prepared(plan, prompt, tokens, bind_references(tags, prompt, tokens.positions))

    def run(self, valid: ValidRequest, should_stop: StopCheck | None = None) -> Path:
        """Stages 3 to 6 for a validated request. `should_stop` is checked after every denoising
        step: when it says so, the prediction ends with Canceled within one step, and one that was
        canceled before it got here ends before any model work."""
        if should_stop is not None and should_stop():
            raise Canceled("canceled before generating")
        seed = valid.seed if valid.seed is not None else secrets.randbelow(2**32)
        prepared = self.prepare(valid.prompt, [r.tag for r in valid.references], plan_for(*valid.entry))
        width, height = prepared.plan.target
        say(f"Using seed: {seed}")
        tags = [r.tag for r in valid.references if r.tag]
        if tags:
            say(f"Using reference tags: {', '.join(tags)}")
        say(f"Generating image with ratio {width}:{height} ({valid.aspect_ratio} at {valid.resolution} resolution)")
        say(prepared.plan.describe())
        started = time.perf_counter()
        clock = Stopwatch(self.runtime.device)
        progress = Progress(should_stop)
        try:
            generation = self._generate(valid, prepared, seed, clock, progress)
        except Canceled:
            self.release_memory()
            raise
        except torch.OutOfMemoryError as exc:
            # Give the memory back so that the next request can run, and say what happened.
            self.release_memory()
            raise RuntimeError(
                f"out of GPU memory while generating {width}x{height} "
                f"with {len(valid.references)} reference(s); the server is still ready ({exc})"
            ) from None
        finally:
            self.steps_run += progress.done
        # 6. Check the output when asked (a flagged one fails here, nothing written), then write
        #    it (and, when asked, the tag masks).
        if self.safety is not None:
            with clock.stage("safety check"):
                self.safety.require_safe(generation.image)
        with clock.stage("write output"):
            path = self.output.write(generation.image, seed)
            if self.settings.writes_masks:
                self._write_masks(generation, path)
            if self.settings.masks_in_logs and (masks := generation.regions[-1].final_masks()) is not None:
                say(masks_line(masks.numpy()))
        self.last_timings = clock.seconds
        say(f"Generated image in {time.perf_counter() - started:.1f}sec")
        return path

    def _generate(
        self, valid: ValidRequest, prepared: Prepared, seed: int, clock: Stopwatch, progress: Progress
    ) -> Generation:
        # 3. Encode the references (cached).
        with clock.stage("reference encoding"):
            encoded = self.encoder.encode([r.image for r in valid.references])
        if valid.references:
            say(f"Reference encodings: {encoded.hits} cached, {encoded.misses} encoded")
        # 4. Read the prompt (bindings made in `prepare`), and encode the text (cached).
        self._say_unread(prepared)
        with clock.stage("text encoding"):
            text = self.text.encode(prepared.prompt.text, prepared.tokens.layout)
        # 5. Denoise and decode, following the size's plan.
        say("Generating...")
        inputs = self._inputs(prepared, seed, encoded, text)
        generation = generate(self.pipe, self.refiner, inputs, self.runtime, clock, progress)
        if generation.tiled_decode:
            say("VAE decode ran out of memory whole; decoded in tiles instead")
        for line in coverage_lines(generation.regions[-1]):
            say(line)
        return generation

    def warm_up(self, jobs: list[WarmupJob], steps: int, should_stop: StopCheck | None = None) -> int:
        """Generate each job once (no output file, no prediction logs), so that what is compiled or
        captured on first use meets those shapes now rather than in a user's request. Returns how
        many jobs ran to their end: fewer when `should_stop` said stop between two steps."""
        config = replace(self.config, steps=steps)
        for done, job in enumerate(jobs):
            prepared = self.prepare(parse_prompt(job.prompt), job.tags, job.plan)
            references = self.encoder.encode([WARMUP_IMAGE] * job.references)
            text = self.text.encode(prepared.prompt.text, prepared.tokens.layout)
            inputs = self._inputs(prepared, 0, references, text, config)
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

    def _say_unread(self, prepared: Prepared) -> None:
        """Say what of a very long prompt the text encoders do not read, and which mentions that
        turns into references for the whole image."""
        tokens = prepared.tokens
        if not tokens.unread:
            return
        say(f"Prompt is {len(tokens.layout.ids)} tokens; the text encoders read the first {tokens.layout.read}")
        for tag in prepared.prompt.mentioned_tags():
            if tag not in tokens.positions:
                say(f"@{tag} is mentioned only after that, so its reference applies to the whole image")

    def _inputs(
        self,
        prepared: Prepared,
        seed: int,
        references: Encoded,
        text: TextEmbeds,
        config: GenerationConfig | None = None,
    ) -> GenerationInputs:
        """One generation's inputs: the request's parts, and the server's config."""
        return GenerationInputs(
            text=text,
            plan=prepared.plan,
            seed=seed,
            references=references,
            bindings=prepared.bindings,
            config=config or self.config,
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
        """Cache sizes and bounds (for the soak test) and the denoising steps run, published with the
        queue's state."""
        return {
            "reference_cache": len(self.encoder.cache),
            "reference_cache_capacity": self.encoder.cache.capacity,
            "text_cache": len(self.text.cache),
            "text_cache_capacity": self.text.cache.capacity,
            "decoded_cache_bytes": self.decoded.weight if self.decoded else 0,
            "decoded_cache_capacity_bytes": self.decoded.capacity if self.decoded else 0,
            "steps_run": self.steps_run,
        }

    def release_memory(self) -> None:
        gc.collect()
        if self.runtime.device.type == "cuda":
            torch.cuda.empty_cache()
