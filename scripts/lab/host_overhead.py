"""The host's work per denoising step, measured on a CPU.

A GPU run whose kernels are small is bound by its host: the Python and dispatch work of each step.
This measures that work without a GPU: the "skeleton" weights (scripts/make_random_weights.py) have
SDXL's full UNet structure (every block, all 70 transformer layers) at tiny widths, and run on
one thread at a tiny size, so that the time is dispatch and Python rather than arithmetic. Plain
multi-image IP-Adapter and tag-localized (3 references), each with this project's host savings
on, with each one switched off in turn, and with all off (diffusers' behaviour), interleaved:
the processor's signature read once per class instead of at every attention call, the text's
cross-attention keys and values projected once per pass instead of at every step, the
pipeline's execution device pinned at setup instead of looked up over every module at each call,
and attention without diffusers' identity steps (eval-mode dropout, division by 1).
Only ratios carry over to another machine.

    python scripts/lab/host_overhead.py [--weights-dir DIR] [--steps 10] [--runs 7] [--size 64x64]
                                    [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0  # noqa: E402

from harness.injection import injection_runner  # noqa: E402
from model.engine.pipeline import SDXLPipeline, attention_modules  # noqa: E402
from model.engine.placement import processors as regions  # noqa: E402
from model.engine.placement.state import RegionState  # noqa: E402
from model.serving.service import ImageService  # noqa: E402
from model.serving.settings import settings_from_env  # noqa: E402
from model.serving.setup import build_service  # noqa: E402
from scripts.bench.common import emit_json, interleaved, quiet, run_facts  # noqa: E402
from scripts.make_random_weights import SKELETON, build  # noqa: E402

log = logging.getLogger("host_overhead")


@contextlib.contextmanager
def diffusers_attention_forward(*models: torch.nn.Module) -> Iterator[None]:
    """diffusers' own `Attention.forward` in `models` for the duration (the setup's per-instance
    forward set aside, then put back)."""
    saved = {
        module: module.__dict__.pop("forward") for module in attention_modules(*models) if "forward" in module.__dict__
    }
    try:
        yield
    finally:
        for module, forward in saved.items():
            module.forward = forward


@contextlib.contextmanager
def text_projected_every_step() -> Iterator[None]:
    """diffusers' way for the duration: every cross-attention layer projects the text at every
    step instead of once per pass."""
    once = RegionState.text_keys_values
    RegionState.text_keys_values = lambda self, attn, text: (attn.to_k(text), attn.to_v(text))
    try:
        yield
    finally:
        RegionState.text_keys_values = once


@contextlib.contextmanager
def device_looked_up(pipe: SDXLPipeline) -> Iterator[None]:
    """diffusers' `_execution_device` (a walk over every module at each pipeline call) for the
    duration, instead of the device pinned at setup."""
    pinned, pipe.execution_device = pipe.execution_device, None
    try:
        yield
    finally:
        pipe.execution_device = pinned


def identity_project_out(attn: Attention, out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`regions.project_out` with diffusers' identity steps kept: the eval-mode dropout and the
    division by a `rescale_output_factor` of 1."""
    batch, heads, _, head_dim = out.shape
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(dtype)))
    return out / attn.rescale_output_factor


@contextlib.contextmanager
def attention_with_identity_steps() -> Iterator[None]:
    """diffusers' way for the duration: self-attention through diffusers' fused processor, and the
    cross-attention fast path ending with the identity steps."""
    lean_self, lean_end = regions.RegionAwareFusedAttnProcessor2_0.__call__, regions.project_out

    def parents(self: object, *args: object, region: object = None, **kwargs: object) -> torch.Tensor:
        return FusedAttnProcessor2_0.__call__(self, *args, **kwargs)

    regions.RegionAwareFusedAttnProcessor2_0.__call__, regions.project_out = parents, identity_project_out
    try:
        yield
    finally:
        regions.RegionAwareFusedAttnProcessor2_0.__call__, regions.project_out = lean_self, lean_end


# This project's host savings, each with what switches it off (diffusers' behaviour) for a run.
SAVINGS: dict[str, Callable[[ImageService], contextlib.AbstractContextManager]] = {
    "signature_once": lambda g: diffusers_attention_forward(g.pipe.unet, g.pipe.vae),
    "text_kv_once": lambda g: text_projected_every_step(),
    "pinned_device": lambda g: device_looked_up(g.pipe),
    "lean_attention": lambda g: attention_with_identity_steps(),
}


def measure(service: ImageService, steps: int, runs: int, width: int, height: int) -> dict:
    """Seconds per step, interleaved: plain and tag-localized, each with every saving on, with each
    one off in turn, and with all off (diffusers' behaviour); and their ratios."""
    run = injection_runner(service, steps, width, height)
    setups = {"this_project": (), **{f"without_{name}": (name,) for name in SAVINGS}, "diffusers": tuple(SAVINGS)}

    def variant(localized: bool, off: tuple[str, ...]) -> Callable[[], object]:
        def call() -> object:
            with contextlib.ExitStack() as stack:
                for name in off:
                    stack.enter_context(SAVINGS[name](service))
                return run(localized)

        return call

    names = [(kind, setup) for kind in ("plain", "tag_localized") for setup in setups]
    seconds = interleaved(runs, *(variant(kind != "plain", setups[setup]) for kind, setup in names))
    # Milliseconds per step, rounded once, here; every ratio below is taken from these reported
    # values, so that it is the ratio of the times it sits beside.
    per_step: dict[str, dict[str, float]] = {kind: {} for kind, _ in names}
    for (kind, setup), total in zip(names, seconds, strict=True):
        per_step[kind][setup] = round(total / steps * 1000, 2)
    return {
        "ms_per_step_this_cpu": per_step,
        # Per saving: time per step with it off over time with every saving on (plain IP-Adapter
        # runs diffusers' processor, which the text saving does not touch: a control).
        "saving_off_over_on": {
            kind: {name: round(v[f"without_{name}"] / v["this_project"], 3) for name in SAVINGS}
            for kind, v in per_step.items()
        },
        "diffusers_over_this_projects": {
            kind: round(v["diffusers"] / v["this_project"], 3) for kind, v in per_step.items()
        },
        "tag_localized_over_plain": {
            setup: round(per_step["tag_localized"][setup] / per_step["plain"][setup], 3)
            for setup in ("this_project", "diffusers")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, help="default: skeleton weights built in a temporary folder")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", default="64x64", help="WxH: small, so that arithmetic stays negligible")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the host's Python is one)")
    parser.add_argument("--out", type=Path, help="JSON file to write (default: print only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights_dir
        if weights is None:
            weights = Path(scratch)
            with quiet():
                build(weights, SKELETON)
        with quiet():
            service = build_service(replace(settings_from_env(), weights_dir=weights, steps=args.steps, device="cpu"))
        result = {
            **run_facts(service),
            "arch": "skeleton" if args.weights_dir is None else str(args.weights_dir),
            "size": args.size,
            "steps": args.steps,
            "runs": args.runs,
            "threads": args.threads,
            **measure(service, args.steps, args.runs, width, height),
        }
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
