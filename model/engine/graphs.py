"""CUDA graphs of the UNet's step: each step's ~2,000 kernel launches replayed as one.

On an H100 the denoising loop is bound by the host: a base step's wall time exceeded its GPU work
(docs/benchmarks/h100/NOTES.md), Python and kernel launches setting the pace. A CUDA graph
records the kernels of one UNet call and replays them with a single launch.

A graph replays the capture's kernels on the capture's memory, with every Python decision of the
capture frozen. So:
- everything a step reads that changes between steps or requests is copied into the graph's own
  input buffers before each replay: latents, timestep, text, pooled text, micro-conditioning,
  image embeddings, and the tag localization's masks, tag-token matrix and which references are
  on while the tagged ones are off (the global ones);
- everything that steers Python is part of the graph's key: every input's shape and dtype, the
  adapter scale, the step's phase (whether anchor layers record their maps, whether tagged
  references are still off) and, while they are off, whether any reference is global (if none
  is, the layers skip the adapter). A base pass with tagged subjects uses three graphs (warm-up,
  the last warm-up step that records, localized), a refine pass one. Inside a step, a subject
  and a place do not differ: each records its map, and the shape of the tag-token matrix
  carries how many do (the masks that tell them apart are made between steps, as is the maps'
  moving average, which no graph reads), and which references are global is data: so "@woman and
  @man in @park" replays the graphs of "@ref1 and @ref2 and @ref3", and one global reference
  among subjects replays the same graphs wherever it stands;
- per-pass caches kept in Python (each layer's text and adapter keys and values, the image
  projection) are not replayed: the graph computes them on the GPU at every step, a few small
  kernels among the thousands it launches at once.

Graphs are captured on first use of a key (two eager calls, then the capture) and kept in a
bounded LRU. They share one memory pool: their steps never run at once, and each step's outputs
are consumed (the scheduler step, the mask update) before the next replay overwrites them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from model.engine.placement.state import RegionState

log = logging.getLogger(__name__)

# SDXL's added conditioning, as the pipelines pass it; anything else runs eager.
ADDED_INPUTS = frozenset({"text_embeds", "time_ids", "image_embeds"})
DEFAULT_CAPACITY = 48  # a 1080p request with tagged subjects uses 4 graphs; 0 references, 2


@dataclass(frozen=True)
class StepResult:
    """One UNet call's output and the maps its anchor layers recorded (None when they did not)."""

    noise: torch.Tensor
    maps: torch.Tensor | None = None
    map_layers: int = 0
    anchor_hw: tuple[int, int] | None = None


StepFn = Callable[[], StepResult]
Capture = Callable[[StepFn, Any], StepFn]


@dataclass(frozen=True)
class Graph:
    """A captured step: its replay and the input buffers it reads."""

    replay: StepFn
    inputs: dict[str, torch.Tensor]


def cuda_graph(step: StepFn, pool: Any, warmups: int = 2) -> StepFn:
    """Capture `step` into a CUDA graph and return its replay. Warm-up calls run on a side stream
    first, as PyTorch's recipe says (cuBLAS handles and lazy initialisation stay out of the graph)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: a CUDA call from another thread of the server cannot break the capture.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        captured = step()
    torch.cuda.synchronize()  # once per graph: the warm-ups' time belongs to the capture's

    def replay() -> StepResult:
        graph.replay()
        return captured

    return replay


def rerun(step: StepFn, pool: Any) -> StepFn:
    """The CPU stand-in for `cuda_graph` in tests: every replay runs the step again, with the same
    frozen phase over the same input buffers, as a graph would replay its kernels."""
    return step


@dataclass
class PhaseRegion(RegionState):
    """The region state a graph is captured with: the phase is fixed, and the masks and the
    tag-token matrix are the graph's input buffers."""

    fixed_records: bool = False
    fixed_tagged_off: bool = True

    @property
    def records(self) -> bool:  # type: ignore[override]
        return self.fixed_records

    @property
    def tagged_off(self) -> bool:  # type: ignore[override]
        return self.fixed_tagged_off


def phase_region(region: RegionState, inputs: dict[str, torch.Tensor]) -> Callable[[], PhaseRegion]:
    """Fresh region states (no cache carried) in the phase `region` is in now, over a graph's
    input buffers."""
    return functools.partial(
        PhaseRegion.over_buffers,
        region,
        inputs.get("weights"),
        inputs.get("token_mean"),
        inputs.get("on"),
        fixed_records=region.records,
        fixed_tagged_off=region.tagged_off,
    )


def step_inputs(
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    added: dict[str, Any],
    region: RegionState | None,
) -> dict[str, torch.Tensor]:
    """Every tensor one UNet step reads that may change between steps or requests, by name."""
    inputs = {"sample": sample, "timestep": timestep, "text": text}
    inputs["text_embeds"], inputs["time_ids"] = added["text_embeds"], added["time_ids"]
    for k, embeds in enumerate(added.get("image_embeds", [])):
        inputs[f"image_embeds.{k}"] = embeds
    if region is not None and not region.tagged_off:
        inputs["weights"] = region.weights
    if region is not None and region.tagged_off and region.has_global:
        inputs["on"] = region.on(sample.device)
    if region is not None and region.records:
        inputs["token_mean"] = region.token_mean(text.shape[1], text.device)
    return inputs


def graph_key(inputs: dict[str, torch.Tensor], has_images: bool, region: RegionState | None, scale: float) -> tuple:
    """What a graph's Python decisions depend on: see the module's docstring."""
    shapes = tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in inputs.items())
    if region is None:  # diffusers' own IP-Adapter path (the benchmark's plain runs)
        return shapes, has_images, None, scale
    # While tagged references are off, a layer skips the adapter unless some reference is global;
    # which ones are is the "on" input. From then on every reference's weight is an input.
    has_global = region.has_global if region.tagged_off else None
    return shapes, has_images, has_global, scale, region.records, region.tagged_off


class UNetGraphs:
    """Stands in for the UNet's `forward`: a call as the pipelines' step loop makes it (tensors on
    CUDA, SDXL's added conditioning, at most a region state as cross-attention argument) replays
    the graph of its key, captured on first use; any other call runs the eager forward."""

    def __init__(self, unet: torch.nn.Module, capture: Capture = cuda_graph, capacity: int = DEFAULT_CAPACITY) -> None:
        self.unet = unet
        self.eager = unet.forward
        self.capture = capture
        self.capacity = capacity
        self.graphs: OrderedDict[tuple, Graph | None] = OrderedDict()  # None: capture failed, stay eager
        self.pool = torch.cuda.graph_pool_handle() if capture is cuda_graph else None
        self.captures = 0
        self.capture_s = 0.0  # warm-ups and captures, all graphs
        self.replays = 0
        # Read at every call for the key: the processors are installed before this, once.
        self.ip_processors = [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        region = (cross_attention_kwargs or {}).get("region")
        if (
            args
            or any(v is not None for v in kwargs.values())  # timestep_cond, masks, residuals...
            or not set(cross_attention_kwargs or {}) <= {"region"}
            or not isinstance(region, RegionState | None)
            or not isinstance(timestep, torch.Tensor)
            or timestep.device != sample.device  # a copy from the host cannot be captured
            or added_cond_kwargs is None
            or not set(added_cond_kwargs) <= ADDED_INPUTS
            or (self.capture is cuda_graph and sample.device.type != "cuda")
        ):
            return self.eager(
                sample,
                timestep,
                encoder_hidden_states,
                *args,
                cross_attention_kwargs=cross_attention_kwargs,
                added_cond_kwargs=added_cond_kwargs,
                return_dict=return_dict,
                **kwargs,
            )
        inputs = step_inputs(sample, timestep, encoder_hidden_states, added_cond_kwargs, region)
        scale = float(self.ip_processors[0].scale[0]) if self.ip_processors else 0.0
        has_images = "image_embeds" in added_cond_kwargs
        key = graph_key(inputs, has_images, region, scale)
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs, region, has_images)
            while len(self.graphs) > self.capacity:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        graph = self.graphs[key]
        if graph is None:
            noise = self.eager(
                sample,
                timestep,
                encoder_hidden_states,
                cross_attention_kwargs=cross_attention_kwargs,
                added_cond_kwargs=added_cond_kwargs,
                return_dict=False,
            )[0]
        else:
            for name, tensor in inputs.items():
                graph.inputs[name].copy_(tensor)
            result = graph.replay()
            self.replays += 1
            if result.maps is not None:
                region.adopt_maps(result.maps, result.map_layers, result.anchor_hw)
            noise = result.noise
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)

    def _capture(self, inputs: dict[str, torch.Tensor], region: RegionState | None, has_images: bool) -> Graph | None:
        """The graph of one key, over its own copies of the inputs; None if capture fails (the
        key then stays eager, and the failure is logged once)."""
        # Normal tensors, not inference ones: a graph captured under generate's inference mode also
        # serves a pipeline called under no_grad (diffusers' default), which may not write to those.
        with torch.inference_mode(False):
            statics = {name: tensor.clone() for name, tensor in inputs.items()}
        added: dict[str, Any] = {"text_embeds": statics["text_embeds"], "time_ids": statics["time_ids"]}
        if has_images:
            added["image_embeds"] = [statics[name] for name in statics if name.startswith("image_embeds.")]

        fresh_region = None if region is None else phase_region(region, statics)

        def step() -> StepResult:
            phase = None if fresh_region is None else fresh_region()
            # The image projection's once-per-pass cache would hand the capture a tensor of an
            # earlier call: inside a graph it is recomputed from the input buffer instead.
            self._forget_projection()
            noise = self.eager(
                statics["sample"],
                statics["timestep"],
                statics["text"],
                cross_attention_kwargs=None if phase is None else {"region": phase},
                added_cond_kwargs=added,
                return_dict=False,
            )[0]
            maps = None if phase is None else phase.recorded_maps()
            return StepResult(noise) if maps is None else StepResult(noise, *maps)

        started = time.perf_counter()
        try:
            replay = self.capture(step, self.pool)
        except Exception:  # a failed capture costs its key the graph, never the request
            log.warning("CUDA graph capture failed; this shape and phase stay eager", exc_info=True)
            return None
        finally:
            self._forget_projection()
        self.captures += 1
        self.capture_s += time.perf_counter() - started
        shapes = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in inputs.items())
        log.info("captured UNet graph %d: %s", self.captures, shapes)
        return Graph(replay, statics)

    def _forget_projection(self) -> None:
        forget = getattr(self.unet.encoder_hid_proj, "forget", None)
        if forget is not None:
            forget()


def install_unet_graphs(
    unet: torch.nn.Module, capture: Capture = cuda_graph, capacity: int = DEFAULT_CAPACITY
) -> UNetGraphs:
    """Route the UNet's calls through CUDA graphs (on the instance: `unet(...)` calls it)."""
    graphs = UNetGraphs(unet, capture, capacity)
    unet.forward = graphs
    return graphs
