"""The suite's images: the references the model makes from text, and each case in three
conditions, through the server's own generation (model/engine/generate.py) and loaded model.

- text only: no reference (the adapter off), the same prompt text;
- plain IP-Adapter: every reference on the whole image, in one of two ways (`Plain`):
  "diffusers" (default): diffusers' own multi-image IP-Adapter. The pipeline is called without
  this project's region state, so that every IP-Adapter layer runs diffusers'
  IPAdapterAttnProcessor2_0 unmasked: one attention over all references' tokens. This is what a
  user of plain diffusers gets.
  "global": this project's processors with every reference bound as global (Kind.GLOBAL): per
  reference its own attention, each at the full scale on the whole image, summed. The same
  arithmetic as the localized run, its masks all ones: it isolates what the masks do.
- localized: this project's tag placement, as a server runs it.
The prompt text (tags rewritten to their words), seed, size, steps and adapter scale are the same
in all three.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from PIL import Image

from model.contract.prompt import parse_prompt
from model.engine.generate import GenerationInputs, Stopwatch, generate
from model.engine.placement.binding import Binding, Kind
from model.engine.plan import Plan
from model.serving.service import ImageService
from scripts.eval.suite import Case, Reference


class Condition(StrEnum):
    TEXT = "text only"
    PLAIN = "plain IP-Adapter"
    LOCALIZED = "localized"


class Plain(StrEnum):
    """How the plain IP-Adapter condition applies every reference to the whole image."""

    DIFFUSERS = "diffusers"
    GLOBAL = "global"


class WithoutRegion:
    """A pipeline whose calls drop `cross_attention_kwargs` (only the region state goes there), so
    that its IP-Adapter layers run diffusers' processor as is (TagRegionAttnProcessor without a
    region is exactly its parent). Everything else is the wrapped pipeline's."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __call__(self, *args: Any, cross_attention_kwargs: dict | None = None, **kwargs: Any) -> Any:
        return self._pipe(*args, **kwargs)


@dataclass(frozen=True)
class Rendered:
    """One output: the image, the bindings it ran with (the localized run's: its kinds), the masks
    its last pass applied ([n, h, w] in binding order; localized only, None if none applied), and
    its seconds."""

    image: Image.Image
    bindings: list[Binding]
    masks: np.ndarray | None
    seconds: float


def render(
    service: ImageService,
    prompt: str,
    tags: list[str],
    images: list[Image.Image],
    seed: int,
    plan: Plan,
    condition: Condition,
    plain: Plain = Plain.DIFFUSERS,
) -> Rendered:
    """Generate one image of `prompt` with `images` (one per tag, request order) in `condition`."""
    prepared = service.prepare(parse_prompt(prompt), tags, plan)
    text = service.text.encode(prepared.prompt.text, prepared.tokens.layout)
    bindings = prepared.bindings
    pipe, refiner = service.pipe, service.refiner
    if condition is Condition.TEXT:
        images, bindings = [], []
    elif condition is Condition.PLAIN:
        bindings = [Binding(b.index, b.tag, Kind.GLOBAL) for b in bindings]
        if plain is Plain.DIFFUSERS:
            pipe, refiner = WithoutRegion(pipe), WithoutRegion(refiner)
    encoded = service.encoder.encode(images)
    inputs = GenerationInputs(
        text=text, plan=plan, seed=seed, references=encoded, bindings=bindings, config=service.config
    )
    started = time.perf_counter()
    generation = generate(pipe, refiner, inputs, service.runtime, Stopwatch(service.runtime.device))
    seconds = time.perf_counter() - started  # the image is on the host: the device has finished
    masks = None
    if condition is Condition.LOCALIZED and (final := generation.regions[-1].final_masks()) is not None:
        masks = final.numpy()
    return Rendered(generation.image, prepared.bindings, masks, seconds)


def make_reference(service: ImageService, reference: Reference, plan: Plan) -> Rendered:
    """A reference image, made by the model in text-only mode from its fixed prompt and seed."""
    return render(service, reference.prompt, [], [], reference.seed, plan, Condition.TEXT)


def render_case(
    service: ImageService, case: Case, references: dict[str, Image.Image], seed: int, plan: Plan, plain: Plain
) -> dict[Condition, Rendered]:
    """The case in the three conditions, one after the other (so that any drift of the machine
    meets all three alike)."""
    tags = [tag for tag, _ in case.tags]
    images = [references[ref] for _, ref in case.tags]
    return {c: render(service, case.prompt, tags, images, seed, plan, c, plain) for c in Condition}
