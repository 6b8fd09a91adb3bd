"""One request's placement state: the maps its anchor layers record at each step, the masks they
make for the next step, and the per-pass caches the attention processors read. Created per request
and handed to the processors through `cross_attention_kwargs`, so that no request sees another's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from model.engine.placement.binding import Binding, Kind, RegionConfig
from model.engine.placement.masks import Placement, place


@dataclass
class RegionState:
    """One request's localization state. Created per request and handed to the processors through
    `cross_attention_kwargs`, so that no request sees another's (nothing shared is mutated)."""

    bindings: list[Binding]
    config: RegionConfig
    steps: int
    latent_hw: tuple[int, int]
    step: int = 0
    # Sum of the anchor layers' [seq, tagged] maps at the current step, and how many layers.
    _acc: torch.Tensor | None = None
    _acc_layers: int = 0
    anchor_hw: tuple[int, int] | None = None
    # [n, h, w] weights at anchor resolution from the previous step; None until one exists.
    weights: torch.Tensor | None = None
    # The `weights` that the latest step applied (None until a step has): what is reported. The
    # masks made after a pass's last step are used by no step of it (a refine pass applies them).
    applied: torch.Tensor | None = None
    # What the rule made of the maps (model/engine/placement/masks.py): `made` for `weights`,
    # `placement` for `applied` (which tags fell back and why, which place was worn): for the logs.
    made: Placement | None = None
    placement: Placement | None = None
    # The maps' average across steps, [tagged, h, w] (RegionConfig.smoothing). Kept here,
    # between steps: a CUDA graph of a step hands the step's maps out (`recorded_maps`) and the
    # masks in (`weights`), and never reads this.
    _smoothed: torch.Tensor | None = None
    # A refine pass carries the base pass's final masks unchanged: no warm-up, no new maps.
    frozen: bool = False
    # Masks per layer size for the current step: ~70 cross-attention layers share 3 sizes.
    _layer_cache: dict[int, torch.Tensor] = field(default_factory=dict)
    # The same masks in the fast path's [seq, n, 1] form, scaled, keyed by layer size and dtype.
    _weight_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    # [77, tagged] matrix that averages each tagged reference's tokens, built once per device.
    _token_mean: torch.Tensor | None = None
    # [n]: 1 for each global reference, 0 for each tagged one; the masks while tagged ones are off.
    _on: torch.Tensor | None = None
    # Each layer's adapter keys and values, in the batched path's layout: a pass's references are
    # fixed, so they are the same at every step (diffusers recomputes them in every layer and step).
    _ip_kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # Each layer's text keys and values, with the prompt tensor they came from: a pass hands the
    # UNet the same prompt embeddings at every step (diffusers recomputes them in every layer and
    # step: two of the ~10 launches of a cross-attention layer).
    _text_kv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def carried(cls, base: RegionState, latent_hw: tuple[int, int], steps: int) -> RegionState:
        """The state of a refine pass: the same bindings and the base pass's final masks, resized
        to each layer of the new latent size."""
        return cls(
            bindings=base.bindings,
            config=base.config,
            steps=steps,
            latent_hw=latent_hw,
            anchor_hw=base.anchor_hw,
            weights=base.weights,
            made=base.made,
            frozen=True,
        )

    @classmethod
    def over_buffers(
        cls,
        source: RegionState,
        weights: torch.Tensor | None,
        token_mean: torch.Tensor | None,
        on: torch.Tensor | None,
        **fields: object,
    ) -> RegionState:
        """A fresh state (no cache carried) for `source`'s request that reads its masks, its
        tag-token matrix and its on-vector from the given tensors: a CUDA graph's input buffers
        (model/engine/graphs.py). `fields` are a subclass's own."""
        state = cls(
            bindings=source.bindings,
            config=source.config,
            steps=source.steps,
            latent_hw=source.latent_hw,
            weights=weights,
            **fields,
        )
        state._token_mean, state._on = token_mean, on
        return state

    @property
    def warmup_steps(self) -> int:
        return 0 if self.frozen else math.ceil(self.config.warmup_fraction * self.steps)

    @property
    def records(self) -> bool:
        """Whether anchor layers record text attention at this step. A step's maps make the next
        step's masks (the last step's, the refine pass's), and masks are used from the end of
        warm-up on: so the anchors skip that work before the last warm-up step."""
        return self.step >= self.warmup_steps - 1 and not self.frozen and bool(self.mapped())

    def mapped(self) -> list[Binding]:
        """The references whose tag's attention map is recorded: subjects and places."""
        return [b for b in self.bindings if b.kind is not Kind.GLOBAL]

    @property
    def has_global(self) -> bool:
        return any(b.kind is Kind.GLOBAL for b in self.bindings)

    def layer_hw(self, seq_len: int) -> tuple[int, int]:
        """Spatial size of a layer with `seq_len` tokens: the latent halved until it fits."""
        h, w = self.latent_hw
        while h * w > seq_len:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w != seq_len:
            raise ValueError(f"no spatial size for {seq_len} tokens from latent {self.latent_hw}")
        return h, w

    def record(self, probs: torch.Tensor, seq_len: int) -> None:
        """Add an anchor layer's text attention (cond half: [heads, seq, 77]) for each tagged
        reference."""
        self.anchor_hw = self.layer_hw(seq_len)
        mean = probs.mean(dim=0, dtype=torch.float32)  # over heads: [seq, 77]
        # One matmul averages every tagged reference's tokens: indexing with a Python list of positions
        # would copy the index to the GPU and wait for it, in every anchor layer.
        token_mean = self.token_mean(mean.shape[-1], mean.device)
        if self._acc is None:
            self._acc = mean @ token_mean  # [seq, tagged]
        else:
            self._acc.addmm_(mean, token_mean)  # one op: multiply and add in place
        self._acc_layers += 1

    def recorded_maps(self) -> tuple[torch.Tensor, int, tuple[int, int] | None] | None:
        """This step's summed anchor maps, how many layers they sum, and their size (None if no
        anchor recorded): what a graph of the step hands back (model/engine/graphs.py)."""
        return None if self._acc is None else (self._acc, self._acc_layers, self.anchor_hw)

    def adopt_maps(self, acc: torch.Tensor, layers: int, anchor_hw: tuple[int, int] | None) -> None:
        """Take a replayed graph's recorded maps as this step's (read by `end_step`)."""
        self._acc, self._acc_layers, self.anchor_hw = acc, layers, anchor_hw

    def token_mean(self, text_len: int, device: torch.device) -> torch.Tensor:
        """[text_len, tagged]: column j averages tagged reference j's tokens. Built by comparing
        positions on the device: any tensor made from Python data would be a copy from the host."""
        if self._token_mean is None or self._token_mean.device != device:
            positions = torch.arange(text_len, device=device)
            columns = [sum((positions == t).float() for t in b.tokens) / len(b.tokens) for b in self.mapped()]
            self._token_mean = torch.stack(columns, dim=1)
        return self._token_mean

    def on(self, device: torch.device) -> torch.Tensor:
        """[n]: which references apply while the tagged ones are off (the global ones). A tensor,
        not a Python decision, so that a CUDA graph reads it from its input buffer and serves every
        order of global and tagged references (model/engine/graphs.py)."""
        if self._on is None or self._on.device != device:
            # From factory calls: a tensor made from a Python list would be a copy from the host.
            factories = [torch.ones if b.kind is Kind.GLOBAL else torch.zeros for b in self.bindings]
            self._on = torch.stack([make((), device=device) for make in factories])
        return self._on

    def end_step(self) -> None:
        """After each denoising step: this step's maps, averaged with the earlier steps', make the
        masks the next step uses (model/engine/placement/masks.py)."""
        if not self.tagged_off:
            # This step's masks, before the next step's replace them.
            self.applied, self.placement = self.weights, self.made
        self.step += 1
        if self._acc is not None and self.anchor_hw is not None:
            h, w = self.anchor_hw
            maps = (self._acc / self._acc_layers).T.reshape(-1, h, w)  # [tagged, h, w]
            if self._smoothed is not None:
                # An average over the steps so far, each step weighing `smoothing` times the next:
                # left unnormalised, since the rule divides each map by its own maximum.
                maps = torch.add(maps, self._smoothed, alpha=self.config.smoothing)
            self._smoothed = maps
            self.made = place(self.bindings, maps, self.config)
            self.weights = self.made.masks
        self._acc, self._acc_layers = None, 0
        if not self.frozen and self.step >= self.warmup_steps:
            # The masks change from here on; during warm-up they do not.
            self._layer_cache, self._weight_cache = {}, {}

    def shares(self) -> dict[int, float]:
        """Each reference's share of the image under the masks the latest step applied, by
        reference index (read once, at the end: reading it is a device-to-host copy)."""
        if self.applied is None:
            return {}
        return {b.index: float(self.applied[k].mean()) for k, b in enumerate(self.bindings)}

    def final_masks(self) -> torch.Tensor | None:
        """[n, h, w] masks that the latest step applied, at anchor resolution (each layer applies
        them resized to its size), on the CPU, in binding order; None if no step applied any."""
        return None if self.applied is None else self.applied.detach().float().cpu()

    def layer_masks(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """[1, n, h, w] weights for a layer: tagged references are off during warm-up (and until a
        map exists); global references are always on."""
        cached = self._layer_cache.get(seq_len)
        if cached is None or cached.device != device:
            cached = self._layer_cache[seq_len] = self._make_layer_masks(seq_len, device)
        return cached

    def ip_weights(self, seq_len: int, device: torch.device, dtype: torch.dtype, scale: float) -> torch.Tensor | None:
        """[seq, n, 1]: each reference's weight (its mask times the adapter scale) at each token of
        a layer, in the fast path's form; None when every reference is off (warm-up, no global
        reference), so that the layer skips the adapter."""
        if self.tagged_off and not self.has_global:
            return None
        key = (seq_len, device, dtype, scale)
        cached = self._weight_cache.get(key)
        if cached is None:
            masks = self.layer_masks(seq_len, device)[0]  # [n, h, w]
            cached = (masks.reshape(masks.shape[0], seq_len).T * scale).to(dtype)[..., None].contiguous()
            self._weight_cache[key] = cached
        return cached

    def ip_keys_values(
        self, processor: IPAdapterAttnProcessor2_0, ip: torch.Tensor, heads: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's adapter keys, transposed and pre-scaled, [batch * heads, head_dim, images *
        tokens], and values, [batch * heads, images * tokens, head_dim], computed at its first call
        in this pass. `ip` is [batch, images, tokens, dim], the same at every step of a pass."""
        cached = self._ip_kv.get((id(processor), ip.shape))
        if cached is None:
            batch, length = ip.shape[0], ip.shape[1] * ip.shape[2]
            key, value = processor.to_k_ip[0](ip), processor.to_v_ip[0](ip)
            head_dim = key.shape[-1] // heads
            key = key.view(batch, length, heads, head_dim).permute(0, 2, 3, 1) * head_dim**-0.5
            value = value.view(batch, length, heads, head_dim).transpose(1, 2)
            cached = (key.reshape(batch * heads, head_dim, length), value.reshape(batch * heads, length, head_dim))
            self._ip_kv[(id(processor), ip.shape)] = cached
        return cached

    def text_keys_values(self, attn: Attention, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's `to_k(text)` and `to_v(text)`, computed at its first call in this pass and
        again only if another prompt tensor arrives. Holding the tensor keeps it alive, so that
        its identity cannot pass to another one."""
        cached = self._text_kv.get(id(attn))
        if cached is None or cached[0] is not text:
            cached = self._text_kv[id(attn)] = (text, attn.to_k(text), attn.to_v(text))
        return cached[1], cached[2]

    @property
    def tagged_off(self) -> bool:
        """Whether tagged references are off at this step (warm-up, or no map yet)."""
        return self.weights is None or self.step < self.warmup_steps

    def _make_layer_masks(self, seq_len: int, device: torch.device) -> torch.Tensor:
        h, w = self.layer_hw(seq_len)
        n = len(self.bindings)
        if self.tagged_off:
            return self.on(device).view(1, n, 1, 1).expand(1, n, h, w)
        weights = self.weights.to(device)
        if weights.shape[-2:] != (h, w):
            weights = F.interpolate(weights[None], size=(h, w), mode="nearest")[0]
        return weights[None]
