"""The tag-placement pass on its own: one denoising with 3 tagged references, as diffusers' plain
multi-image IP-Adapter or with this project's region masks; and an op counter for the host's work
per step (what a GPU run bound by its host pays for)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from model.contract.prompt import parse_prompt
from model.engine.placement.binding import RegionConfig, bind_references
from model.engine.placement.state import RegionState
from model.engine.tokens import mention_positions
from model.serving.service import ImageService

PROMPT = "a close up portrait of @woman and @man standing in @park, hands in pockets, looking cool."


TAGS = ["park", "woman", "man"]


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops the host dispatches, views left out (on a GPU, roughly one kernel
    launch each: the denoising loop is bound by the host when launching costs more than the
    kernels run), and
    among them those that, on a GPU, wait for the device or copy Python data from the host:
    reading a value (`.item()`, `float(t)`, a branch on a tensor) and tensors made from Python
    data (`torch.tensor([...])`, indexing with a list)."""

    HOST_DATA = frozenset({"aten._local_scalar_dense.default", "aten.lift_fresh.default", "aten.nonzero.default"})

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.host_data: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func is torch.ops.aten._unsafe_view.default):
            self.ops += 1
        if str(func) in self.HOST_DATA:
            self.host_data[str(func)] = self.host_data.get(str(func), 0) + 1
        return func(*args, **(kwargs or {}))


def injection_runner(service: ImageService, steps: int, width: int, height: int) -> Callable[..., RegionState]:
    """`run(localized, on_step=None)`: one denoising (latents only) with 3 references, as diffusers'
    plain multi-image IP-Adapter or with this project's per-tag region masks; returns the run's
    region state (left unused by a plain run)."""
    pipe, runtime = service.pipe, service.runtime
    images = [Image.new("RGB", (512, 512), c) for c in ("green", "pink", "navy")]
    embeds = service.encoder.encode(images).ip_adapter_embeds(guidance=True).to(runtime.device, runtime.dtype)
    parsed = parse_prompt(PROMPT)
    bindings = bind_references(list(TAGS), parsed, mention_positions(parsed, pipe.tokenizer))
    pipe.set_ip_adapter_scale(service.settings.ip_adapter_scale)
    scale = pipe.vae_scale_factor

    def run(localized: bool, on_step: Callable[[], None] | None = None) -> RegionState:
        region = RegionState(bindings, RegionConfig(), steps, (height // scale, width // scale))

        def step_end(_pipe: object, _i: int, _t: object, kwargs: dict) -> dict:
            if localized:
                region.end_step()
            if on_step is not None:
                on_step()
            return kwargs

        pipe(
            prompt=parsed.text,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=service.settings.effective_guidance,
            ip_adapter_image_embeds=[embeds],
            generator=torch.Generator(device=runtime.device).manual_seed(1),
            cross_attention_kwargs={"region": region} if localized else None,
            callback_on_step_end=step_end,
            output_type="latent",
        )
        return region

    return run


def count_injection_ops(run: Callable[..., RegionState]) -> dict:
    """Ops dispatched at each step (views left out) and host reads, plain vs tag-localized: a
    measure of host work that does not depend on the machine. Without CUDA graphs, a GPU run
    whose kernels are small is bound by it."""
    result = {}
    for name, localized in (("plain", False), ("tag_localized", True)):
        marks: list[int] = []
        with OpCounter() as counter:
            run(localized, on_step=lambda c=counter, m=marks: m.append(c.ops))
        per_step = [b - a for a, b in zip([0, *marks], marks, strict=False)]
        result[name] = {"ops": counter.ops, "ops_per_step": per_step, "host_reads": counter.host_data}
    result["ops_ratio_localized_over_plain"] = round(result["tag_localized"]["ops"] / result["plain"]["ops"], 3)
    return result
