"""Load SDXL base + the fp16-fix VAE + IP-Adapter Plus (ViT-H) from the weights folder.

One code path for the real weights and the tiny offline stand-ins; nothing is ever downloaded
here (scripts/download_weights.py does that).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models import attention_processor
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from diffusers.models.resnet import ResnetBlock2D
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPImageProcessorPil, CLIPVisionConfig
from transformers.utils import logging as transformers_logging

from model.engine.options import DTYPE_NAMES
from model.engine.weights import (
    IMAGE_ENCODER_SUBFOLDER,
    IP_ADAPTER,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT,
    LIGHTNING_LORA_WEIGHT,
    SDXL_BASE,
    SDXL_LIGHTNING,
    SDXL_VAE_FP16_FIX,
    missing_repos,
    weights_label,
)

log = logging.getLogger(__name__)


class MissingWeightsError(RuntimeError):
    """The weights folder lacks a repository; the message says how to get it."""


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision the model runs."""

    device: torch.device
    dtype: torch.dtype


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def pick_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """fp16 on CUDA (the fp16-fix VAE makes that safe end to end), fp32 on CPU, unless `dtype`
    names one of DTYPES."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        return Runtime(device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
    return Runtime(device=dev, dtype=DTYPES[dtype])


def check_weights(weights_dir: Path, turbo: bool = False) -> None:
    """Raise MissingWeightsError naming what is missing and the script that fetches it."""
    missing = missing_repos(weights_dir, turbo)
    if missing:
        names = ", ".join(f"{r.repo_id} (expected {weights_dir / r.folder / r.marker})" for r in missing)
        raise MissingWeightsError(
            f"weights missing in {weights_dir}: {names}. Run `python scripts/download_weights.py "
            f"--weights-dir {weights_dir}{' --turbo' if turbo else ''}` to fetch them, or "
            f"`python scripts/make_random_weights.py {weights_dir}` for tiny random test weights."
        )


class PinnedDevice:
    """A pipeline whose execution device is set once, where setup put the model.

    diffusers' `_execution_device` looks for offloading hooks in every module of every component
    at each pipeline call (milliseconds of host time with SDXL's module structure, twice per
    prediction: docs/performance.md). This project never offloads, so
    the answer cannot change after setup. Unpinned (None), it is diffusers' own.
    """

    execution_device: torch.device | None = None

    @property
    def _execution_device(self) -> torch.device:
        pinned = self.execution_device
        return pinned if pinned is not None else super()._execution_device  # type: ignore[misc]


class UNet(UNet2DConditionModel):
    """diffusers' SDXL UNet, whose IP-Adapter loading walks its modules once instead of 141 times.

    diffusers 0.42's `_convert_ip_adapter_attn_to_diffusers` reads `self.attn_processors` (a walk
    over every module) once more for each of the 140 processors it builds: a large part of a warm
    `load_pipeline` (docs/performance.md). That conversion only
    builds new processors and changes none, so one snapshot taken before it answers every read.
    """

    _processor_snapshot: dict | None = None

    @property
    def attn_processors(self) -> dict:
        snapshot = self._processor_snapshot
        return dict(snapshot) if snapshot is not None else super().attn_processors

    def _convert_ip_adapter_attn_to_diffusers(self, *args, **kwargs) -> dict:
        self._processor_snapshot = super().attn_processors
        try:
            return super()._convert_ip_adapter_attn_to_diffusers(*args, **kwargs)
        finally:
            self._processor_snapshot = None


class SDXLPipeline(PinnedDevice, StableDiffusionXLPipeline):
    """diffusers' SDXL text-to-image pipeline with a pinned execution device."""


class SDXLImg2ImgPipeline(PinnedDevice, StableDiffusionXLImg2ImgPipeline):
    """diffusers' SDXL img2img pipeline (the refine pass) with a pinned execution device."""


def load_pipeline(weights_dir: Path, runtime: Runtime, turbo: bool = False) -> SDXLPipeline:
    """The SDXL pipeline with IP-Adapter Plus loaded, on the runtime's device and dtype; with
    `turbo`, SDXL-Lightning's 4-step LoRA fused into the UNet and its scheduler."""
    check_weights(weights_dir, turbo)
    # Local folders only: a missing file must fail here, not turn into a download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dtype = runtime.dtype
    with without_progress_bars():
        vae = AutoencoderKL.from_pretrained(weights_dir / SDXL_VAE_FP16_FIX.folder, dtype=dtype)
        base = weights_dir / SDXL_BASE.folder
        unet = UNet.from_pretrained(base, subfolder="unet", dtype=dtype, variant="fp16", use_safetensors=True)
        pipe = SDXLPipeline.from_pretrained(
            base, unet=unet, vae=vae, dtype=dtype, variant="fp16", use_safetensors=True, add_watermarker=False
        )
        # Registered before load_ip_adapter, which then keeps it instead of building its own.
        encoder_config = CLIPVisionConfig.from_pretrained(weights_dir / IP_ADAPTER.folder / IMAGE_ENCODER_SUBFOLDER)
        pipe.register_modules(feature_extractor=clip_processor(encoder_config.image_size))
        pipe.load_ip_adapter(
            str(weights_dir / IP_ADAPTER.folder),
            subfolder=IP_ADAPTER_SUBFOLDER,
            weight_name=IP_ADAPTER_WEIGHT,
            image_encoder_folder=IMAGE_ENCODER_SUBFOLDER,  # loaded in the pipeline's dtype
        )
        if turbo:
            load_unet_lora(pipe, weights_dir / SDXL_LIGHTNING.folder / LIGHTNING_LORA_WEIGHT)
            # Fused into the weights, then the LoRA layers dropped: no per-step LoRA cost, and the
            # attention processors installed later see plain Linear layers.
            pipe.fuse_lora(components=["unet"], lora_scale=1.0)
            pipe.unload_lora_weights()
            # SDXL-Lightning's sampler: Euler with trailing timestep spacing (its model card).
            pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.to(runtime.device)  # every part was loaded in `dtype` already
    pipe.execution_device = pipe.device  # diffusers' answer, read once (e.g. cuda:0 for "cuda")
    pipe.unet.encoder_hid_proj = ProjectionOncePerPass(list(pipe.unet.encoder_hid_proj.image_projection_layers))
    read_signatures_once(pipe.unet, pipe.vae)
    if runtime.device.type == "cuda":
        # SDPA is diffusers' default attention on torch 2; channels_last helps the convolutions.
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    log.info(
        "loaded %s weights from %s on %s (%s)",
        weights_label(weights_dir),
        weights_dir,
        runtime.device,
        dtype,
    )
    return pipe


def load_unet_lora(pipe: SDXLPipeline, path: Path) -> None:
    """Load a UNet-only LoRA (SDXL-Lightning's), in any layout diffusers reads (PEFT, kohya).

    Into the UNet alone: `load_lora_weights` also tries both text encoders and warns twice that it
    found nothing for them. A file that does hold text-encoder weights is refused rather than half
    applied."""
    state_dict, network_alphas = pipe.lora_state_dict(
        str(path.parent), weight_name=path.name, unet_config=pipe.unet.config
    )
    others = sorted({key.split(".", 1)[0] for key in state_dict if not key.startswith(f"{pipe.unet_name}.")})
    if others:
        raise ValueError(f"{path} holds LoRA weights for {', '.join(others)}; the turbo LoRA must be UNet-only")
    pipe.load_lora_into_unet(state_dict, network_alphas=network_alphas, unet=pipe.unet, _pipeline=pipe)


def clip_processor(size: int) -> CLIPImageProcessorPil:
    """The image encoder's preprocessing as diffusers' load_ip_adapter builds it (shortest side to
    `size`, centre crop to `size` x `size`, CLIP's mean and std), always on the PIL backend.
    transformers 5 gives `CLIPImageProcessor` torchvision's backend where torchvision is installed
    and PIL's where it is not, as in the project's image; naming the backend makes every machine
    (GPU hosts with torchvision included) run and time what users run."""
    return CLIPImageProcessorPil(size=size, crop_size=size)


@contextlib.contextmanager
def without_progress_bars() -> Iterator[None]:
    """diffusers' and transformers' loading progress bars off inside the block, then as they were.
    In a server's log each bar is a dozen carriage-return fragments that say nothing."""
    libraries = (diffusers_logging, transformers_logging)
    were_on = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_on in zip(libraries, were_on, strict=True):
            if was_on:
                library.enable_progress_bar()


class ProjectionOncePerPass(MultiIPAdapterImageProjection):
    """diffusers' IP-Adapter image projection (the Plus resampler), run once per pass instead of in
    every UNet call: a pass hands the UNet the same embedding tensors at every step.

    It keeps the last call's input tensors: the same objects give the same output. Holding them
    keeps them alive, so their identity cannot pass to another request's tensors, and diffusers
    builds new ones for each pass (and never writes to them). Outside inference mode the version
    counters also catch an in-place change; inference tensors have none.
    """

    def __init__(self, layers: list[torch.nn.Module]) -> None:
        super().__init__(layers)  # the same modules: parameters and state-dict keys unchanged
        self._last: tuple[list[torch.Tensor], list[int], list[torch.Tensor]] | None = None

    def forward(self, image_embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        if not isinstance(image_embeds, list):  # diffusers' deprecated single-tensor form: not kept
            return super().forward(image_embeds)
        last = self._last
        if (
            last is not None
            and len(image_embeds) == len(last[0])
            and all(a is b and _version(a) == v for a, b, v in zip(image_embeds, last[0], last[1], strict=True))
        ):
            return list(last[2])
        projected = super().forward(image_embeds)
        self._last = (list(image_embeds), [_version(t) for t in image_embeds], projected)
        return list(projected)

    def forget(self) -> None:
        """Drop the kept call, so that the next one computes (a CUDA graph's capture must)."""
        self._last = None


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place write counter; -1 for an inference tensor, which keeps none."""
    return -1 if tensor.is_inference() else tensor._version


# diffusers' Attention.forward reads its processor's signature (inspect.signature) at every call, to
# drop the keyword arguments the processor does not take: 141 times per SDXL UNet call. That is pure
# host time, which a GPU run bound by its host pays in full (scripts/lab/host_overhead.py measures it).
QUIET_KWARGS = frozenset({"ip_adapter_masks", "ip_hidden_states"})  # diffusers' quiet_attn_parameters


@functools.cache
def processor_parameters(processor_type: type) -> frozenset[str]:
    """The parameter names of a processor class's `__call__` once bound (without `self`): what
    diffusers reads from `inspect.signature(processor.__call__)` at every call."""
    return frozenset(list(inspect.signature(processor_type.__call__).parameters)[1:])


def attention_forward(
    self: Attention,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    **cross_attention_kwargs: object,
) -> torch.Tensor:
    """diffusers' `Attention.forward` with the processor's parameters read once per processor
    class: the same filtering of `cross_attention_kwargs` and the same warning."""
    accepted = processor_parameters(type(self.processor))
    unused = [k for k in cross_attention_kwargs if k not in accepted and k not in QUIET_KWARGS]
    if unused:
        name = self.processor.__class__.__name__
        attention_processor.logger.warning(
            f"cross_attention_kwargs {unused} are not expected by {name} and will be ignored."
        )
    return self.processor(
        self,
        hidden_states,
        encoder_hidden_states=encoder_hidden_states,
        attention_mask=attention_mask,
        **{k: w for k, w in cross_attention_kwargs.items() if k in accepted},
    )


def attention_modules(*models: torch.nn.Module) -> list[Attention]:
    """Every diffusers `Attention` in `models`."""
    return [m for model in models for m in model.modules() if isinstance(m, Attention)]


def read_signatures_once(*models: torch.nn.Module) -> None:
    """Give every diffusers `Attention` in `models` `attention_forward` (on the instance, so that
    processors can still be swapped: the lookup is per call, by the processor's class)."""
    for module in attention_modules(*models):
        module.forward = types.MethodType(attention_forward, module)


def img2img_from(pipe: SDXLPipeline) -> SDXLImg2ImgPipeline:
    """The img2img pipeline over the same loaded modules (no second load, no copy): the refine
    pass shares the UNet and its IP-Adapter processors, the VAE and the text encoders."""
    # from_pipe casts every module to its `dtype` argument, which defaults to float32 (diffusers
    # 0.42): without it the fp16 model silently became fp32 (twice the memory, much slower).
    # The UNet is passed by name: from_pipe carries over only a model of exactly the type its
    # signature names, and ours is a subclass.
    refiner = SDXLImg2ImgPipeline.from_pipe(pipe, unet=pipe.unet, dtype=pipe.dtype)
    refiner.execution_device = pipe.execution_device
    refiner.set_progress_bar_config(disable=True)
    return refiner


# What GEN4_COMPILE compiles: the ResNet and feed-forward blocks, pure tensor code that never sees
# a request's tag state. The attention processors, which do, stay eager (SDPA is one fused kernel
# already); compiling through them would guard on each request's RegionState and recompile.
COMPILED_BLOCKS = (ResnetBlock2D, FeedForward)


def compile_blocks(*models: torch.nn.Module) -> int:
    """torch.compile every ResNet and feed-forward block of `models` in place and return how many.
    Regional compilation: the instances of a class share a few graphs instead of one graph per
    model, which keeps the compile time of a cold boot short. Shapes are dynamic, so that the 12
    output sizes (and the tiled VAE's tiles) reuse the graphs instead of recompiling each."""
    # Blocks of different widths are different graphs of one code object: allow enough of them.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = 0
    for model in models:
        for module in model.modules():
            if isinstance(module, COMPILED_BLOCKS):
                module.compile(dynamic=True)
                compiled += 1
    return compiled
