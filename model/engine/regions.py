"""Each reference lands where its @tag is: token-localized multi-reference IP-Adapter.

Training-free, on the standard h94 weights. At every denoising step, the text cross-attention of
an anchor block gives, for each tagged subject, a map of where its tag's tokens attend (mean over
heads and over the tag's tokens). The maps are normalised, thresholded and made mutually exclusive
between subjects; the next step applies each reference's IP-Adapter output only inside its mask,
resized to every layer's resolution. The first part of the steps runs with the tagged references
off so that the layout forms from the text first (as FastComposer and Conceptrol do).

A reference mentioned as the place ("in @park", "at @cafe") gets the region no subject claims, so
it never paints over the subjects. Untagged or unmentioned references apply to the whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
)

from model.contract.prompt import ParsedPrompt


@dataclass(frozen=True)
class RegionConfig:
    """The knobs of tag localization, with defaults from the literature."""

    # Fraction of steps before tagged references switch on: FastComposer delays identity
    # injection to about the first 20-30% of steps so that the layout comes from the text.
    warmup_fraction: float = 0.25
    # A subject claims a pixel where its normalised map is at least this (Prompt-to-Prompt style
    # local-blend thresholds sit at 0.3 to 0.5) and higher than every other subject's.
    threshold: float = 0.35
    # Cross-attention layers whose maps are averaged: SDXL's lowest-resolution decoder block
    # (32x32 at 1024px), where cross-attention is most semantic (as in MS-Diffusion and P2P).
    anchor_prefix: str = "up_blocks.0."


@dataclass(frozen=True)
class Binding:
    """How one reference applies: to its tag's region ("subject"), the leftover ("place"), or
    everywhere ("global"); `tokens` are its tag's positions in the text encoders' window."""

    index: int
    tag: str | None
    kind: str
    tokens: tuple[int, ...] = ()


def bind_references(
    tags: list[str | None], parsed: ParsedPrompt, positions: dict[str, tuple[int, ...]]
) -> list[Binding]:
    """Decide for each reference (in request order) whether it is a subject, the place or global."""
    bindings = []
    for index, tag in enumerate(tags):
        if tag is None or tag not in positions:
            bindings.append(Binding(index=index, tag=tag, kind="global"))
            continue
        kind = "place" if parsed.names_a_place(tag) else "subject"
        bindings.append(Binding(index=index, tag=tag, kind=kind, tokens=positions[tag]))
    if not any(b.kind == "subject" for b in bindings):
        # Nothing claims a region, so the place is simply everywhere.
        bindings = [Binding(b.index, b.tag, "global", b.tokens) if b.kind == "place" else b for b in bindings]
    return bindings


@dataclass
class RegionState:
    """One request's localization state. Created per request and handed to the processors through
    `cross_attention_kwargs`, so that no request sees another's (nothing shared is mutated)."""

    bindings: list[Binding]
    config: RegionConfig
    steps: int
    latent_hw: tuple[int, int]
    step: int = 0
    # Sum of the anchor layers' [seq, subjects] maps at the current step, and how many layers.
    _acc: torch.Tensor | None = None
    _acc_layers: int = 0
    anchor_hw: tuple[int, int] | None = None
    # [n, h, w] weights at anchor resolution from the previous step; None until one exists.
    weights: torch.Tensor | None = None
    # A refine pass carries the base pass's final masks unchanged: no warm-up, no new maps.
    frozen: bool = False
    # Masks per layer size for the current step: ~70 cross-attention layers share 3 sizes.
    _layer_cache: dict[int, torch.Tensor] = field(default_factory=dict)
    # The same masks in the fast path's [seq, n, 1] form, scaled, keyed by layer size and dtype.
    _weight_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    # [77, subjects] matrix that averages each subject's tag tokens, built once per device.
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
            frozen=True,
        )

    @property
    def warmup_steps(self) -> int:
        return 0 if self.frozen else math.ceil(self.config.warmup_fraction * self.steps)

    @property
    def records(self) -> bool:
        """Whether anchor layers record text attention at this step. A step's maps make the next
        step's masks (the last step's, the refine pass's), and masks are used from the end of
        warm-up on: so the anchors skip that work before the last warm-up step."""
        return self.step >= self.warmup_steps - 1 and not self.frozen and bool(self.subjects())

    def subjects(self) -> list[Binding]:
        return [b for b in self.bindings if b.kind == "subject"]

    @property
    def has_global(self) -> bool:
        return any(b.kind == "global" for b in self.bindings)

    def layer_hw(self, seq_len: int) -> tuple[int, int]:
        """Spatial size of a layer with `seq_len` tokens: the latent halved until it fits."""
        h, w = self.latent_hw
        while h * w > seq_len:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w != seq_len:
            raise ValueError(f"no spatial size for {seq_len} tokens from latent {self.latent_hw}")
        return h, w

    def record(self, probs: torch.Tensor, seq_len: int) -> None:
        """Add an anchor layer's text attention (cond half: [heads, seq, 77]) for each subject."""
        self.anchor_hw = self.layer_hw(seq_len)
        mean = probs.mean(dim=0, dtype=torch.float32)  # over heads: [seq, 77]
        # One matmul averages every subject's tokens: indexing with a Python list of positions
        # would copy the index to the GPU and wait for it, in every anchor layer.
        token_mean = self.token_mean(mean.shape[-1], mean.device)
        if self._acc is None:
            self._acc = mean @ token_mean  # [seq, subjects]
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
        """[text_len, subjects]: column j averages subject j's tag tokens. Built by comparing
        positions on the device: any tensor made from Python data would be a copy from the host."""
        if self._token_mean is None or self._token_mean.device != device:
            positions = torch.arange(text_len, device=device)
            columns = [sum((positions == t).float() for t in b.tokens) / len(b.tokens) for b in self.subjects()]
            self._token_mean = torch.stack(columns, dim=1)
        return self._token_mean

    def on(self, device: torch.device) -> torch.Tensor:
        """[n]: which references apply while the tagged ones are off (the global ones). A tensor,
        not a Python decision, so that a CUDA graph reads it from its input buffer and serves every
        order of global and tagged references (model/engine/graphs.py)."""
        if self._on is None or self._on.device != device:
            # From factory calls: a tensor made from a Python list would be a copy from the host.
            factories = [torch.ones if b.kind == "global" else torch.zeros for b in self.bindings]
            self._on = torch.stack([make((), device=device) for make in factories])
        return self._on

    def end_step(self) -> None:
        """After each denoising step: turn this step's maps into the masks the next step uses."""
        self.step += 1
        if self._acc is not None and self.anchor_hw is not None:
            h, w = self.anchor_hw
            acc = self._acc / self._acc_layers
            maps = {b.index: acc[:, j].reshape(h, w) for j, b in enumerate(self.subjects())}
            self.weights = masks_from_maps(self.bindings, maps, self.config.threshold, (h, w))
        self._acc, self._acc_layers = None, 0
        if not self.frozen and self.step >= self.warmup_steps:
            # The masks change from here on; during warm-up they do not.
            self._layer_cache, self._weight_cache = {}, {}

    def shares(self) -> dict[int, float]:
        """Each reference's share of the image under the latest masks (read once, at the end:
        reading it is a device-to-host copy)."""
        if self.weights is None:
            return {}
        return {b.index: float(self.weights[k].mean()) for k, b in enumerate(self.bindings)}

    def final_masks(self) -> torch.Tensor | None:
        """[n, h, w] masks at anchor resolution on the CPU, in binding order (None if none)."""
        return None if self.weights is None else self.weights.detach().float().cpu()

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


def masks_from_maps(
    bindings: list[Binding], maps: dict[int, torch.Tensor], threshold: float, hw: tuple[int, int]
) -> torch.Tensor:
    """[n, h, w] binary masks: subjects by normalised map (threshold, then argmax, so no pixel
    belongs to two subjects), the place where no subject is, global references everywhere."""
    subjects = [b for b in bindings if b.kind == "subject"]
    # On the maps' device (the GPU's, in a real run), so that nothing crosses to the host.
    device = next(iter(maps.values())).device if maps else torch.device("cpu")
    claimed = torch.zeros(hw, device=device)
    owner = torch.full(hw, -1, dtype=torch.long, device=device)
    if subjects:
        stack = []
        for b in subjects:
            m = maps[b.index]
            lo = m.min()
            # No branch on a tensor value (that would be a host sync): a flat map gives 0 / tiny = 0.
            span = (m.max() - lo).clamp_min(torch.finfo(m.dtype).tiny)
            stack.append((m - lo) / span)
        normed = torch.stack(stack)
        best, arg = normed.max(dim=0)
        owner = torch.where(best >= threshold, arg, owner)
        claimed = (owner >= 0).float()
    masks = []
    subject_rank = {b.index: k for k, b in enumerate(subjects)}
    for b in bindings:
        if b.kind == "subject":
            masks.append((owner == subject_rank[b.index]).float())
        elif b.kind == "place":
            masks.append(1.0 - claimed)
        else:
            masks.append(torch.ones(hw, device=device))
    return torch.stack(masks)


class TagRegionAttnProcessor(IPAdapterAttnProcessor2_0):
    """diffusers' IP-Adapter processor, each reference's output restricted to its tag's region.

    Without a `region` (or with no reference) it is exactly the parent. With one, it records the
    text attention in anchor layers and applies every reference under its mask. On SDXL's plain
    cross-attention layers that takes one batched attention over all references (`_fast_call`):
    diffusers' own masked path (`ip_adapter_masks`, kept for every other layer) loops over the
    images and resamples each mask in every layer, and on a GPU those ~30 small launches per layer
    made the denoising loop bound by the host. Both compute the same thing: per image, softmax
    attention over that image's tokens, times its scale and mask, added to the text attention.
    """

    def __init__(self, *args: object, anchor: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.anchor = anchor

    @classmethod
    def replacing(cls, parent: IPAdapterAttnProcessor2_0, anchor: bool) -> TagRegionAttnProcessor:
        """A processor with the parent's configuration and (shared) IP weights."""
        # Built on the meta device: the parent's constructor makes and randomly initialises its
        # own key and value projections, 140 Linear layers on the host that the parent's replace
        # at once (2 to 3 s of a server's setup on this project's CPU, measured).
        with torch.device("meta"):
            new = cls(parent.hidden_size, parent.cross_attention_dim, parent.num_tokens, parent.scale, anchor=anchor)
        new.to_k_ip, new.to_v_ip = parent.to_k_ip, parent.to_v_ip
        return new

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: list[torch.Tensor] | None = None,
        region: RegionState | None = None,
    ) -> torch.Tensor:
        if region is None or not isinstance(encoder_hidden_states, tuple) or hidden_states.ndim != 3:
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks
            )
        if self.fast_path_fits(attn, attention_mask):
            return self._fast_call(attn, hidden_states, encoder_hidden_states, region)
        seq_len = hidden_states.shape[1]
        if self.anchor and region.records:
            region.record(self._text_attention(attn, hidden_states, encoder_hidden_states[0]), seq_len)
        masks = region.layer_masks(seq_len, hidden_states.device)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, [masks])

    def fast_path_fits(self, attn: Attention, attention_mask: torch.Tensor | None) -> bool:
        """Whether this layer is SDXL's plain cross-attention (one adapter with one scale, no norms,
        no attention mask, no residual), the only case `_fast_call` implements."""
        return (
            attention_mask is None
            and len(self.scale) == 1
            and not isinstance(self.scale[0], list)
            and attn.spatial_norm is None
            and attn.group_norm is None
            and not attn.norm_cross
            and not attn.residual_connection
        )

    def _fast_call(
        self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: tuple, region: RegionState
    ) -> torch.Tensor:
        text, (ip,) = encoder_hidden_states  # ip: [batch, images, tokens, dim]
        batch, seq_len, _ = hidden_states.shape
        heads = attn.heads
        # 1. Text attention, as the parent computes it.
        query = attn.to_q(hidden_states)
        key, value = region.text_keys_values(attn, text)
        head_dim = key.shape[-1] // heads
        q = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        records = self.anchor and region.records
        weights = region.ip_weights(seq_len, hidden_states.device, q.dtype, float(self.scale[0]))
        if not records and weights is None:
            return project_out(attn, out, query.dtype)
        # One copy of the query in the layout batched matmuls take, shared by steps 2 and 3.
        q_rows = q.reshape(batch * heads, seq_len, head_dim)
        # 2. Anchor layers: where the tag tokens land, from the same query and key (cond half).
        if records:
            scores = torch.baddbmm(
                q.new_empty(()), q_rows[-heads:], k[-1].transpose(-1, -2), beta=0, alpha=head_dim**-0.5
            )
            region.record(torch.softmax(scores, dim=-1), seq_len)
        # 3. Every reference at once: per image a softmax over its own tokens (as the parent's
        #    masked path), weighted by scale x mask, summed over images by one matmul.
        if weights is not None:
            images, tokens = ip.shape[1], ip.shape[2]
            ip_key_t, ip_value = region.ip_keys_values(self, ip, heads)
            scores = torch.bmm(q_rows, ip_key_t).view(batch * heads, seq_len, images, tokens)
            probs = torch.softmax(scores, dim=-1) * weights
            out = out + torch.bmm(probs.view(batch * heads, seq_len, images * tokens), ip_value).view(out.shape)
        return project_out(attn, out, query.dtype)

    @staticmethod
    def _text_attention(attn: Attention, hidden_states: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Softmax(QK^T) of the conditional half of the batch: [heads, seq, text tokens].
        Computed only in anchor layers of the parent's path; the others keep SDPA's fused kernel."""
        cond = slice(hidden_states.shape[0] // 2, None) if hidden_states.shape[0] > 1 else slice(None)
        query = attn.to_q(hidden_states[cond])[-1]
        key = attn.to_k(text[cond])[-1]
        head_dim = query.shape[-1] // attn.heads
        q = query.view(-1, attn.heads, head_dim).transpose(0, 1)
        k = key.view(-1, attn.heads, head_dim).transpose(0, 1)
        return torch.softmax(q @ k.transpose(-1, -2) * head_dim**-0.5, dim=-1)


def project_out(attn: Attention, out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Heads back together and the output projection, as diffusers' processors end. Two of
    their steps are the identity at inference and are skipped, since each costs a module call or
    a kernel launch in every attention layer: the dropout in eval mode, and the division by a
    `rescale_output_factor` of 1 (SDXL's everywhere; x / 1.0 is exactly x)."""
    batch, heads, _, head_dim = out.shape
    out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(dtype)
    out = attn.to_out[0](out)
    if attn.training:
        out = attn.to_out[1](out)
    if attn.rescale_output_factor != 1.0:
        out = out / attn.rescale_output_factor
    return out


class RegionAwareAttnProcessor2_0(AttnProcessor2_0):  # noqa: N801 - diffusers' naming
    """diffusers' SDPA processor for self-attention, accepting (and ignoring) the `region` that
    the cross-attention processors use, so that diffusers does not filter it on every call."""

    def __call__(self, *args: object, region: RegionState | None = None, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
        return super().__call__(*args, **kwargs)


class RegionAwareFusedAttnProcessor2_0(FusedAttnProcessor2_0):  # noqa: N801 - diffusers' naming
    """diffusers' fused-QKV SDPA processor for self-attention, accepting (and ignoring) `region`.
    On SDXL's plain self-attention (no mask, no norms, no residual) it runs the parent's steps
    without its branches and identity steps (`project_out`); any other layer gets the parent."""

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: object,
        region: RegionState | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if (
            encoder_hidden_states is not None
            or attention_mask is not None
            or args
            or kwargs.get("scale") is not None
            or hidden_states.ndim != 3
            or attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_q is not None
            or attn.norm_k is not None
            or attn.residual_connection
        ):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        batch = hidden_states.shape[0]
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        head_dim = key.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        return project_out(attn, out, query.dtype)


def install_processors(unet: torch.nn.Module, config: RegionConfig, fuse_self_attention: bool = False) -> int:
    """Swap every IP-Adapter cross-attention processor for the tag-region one (same weights), and
    every plain one for its region-aware twin. With `fuse_self_attention`, each self-attention's Q,
    K and V projections become one matmul (diffusers' fuse_projections); cross-attention is never
    fused, so that its IP-Adapter processors stay. Returns how many layers were fused."""
    processors = {}
    fused = 0
    for name, proc in unet.attn_processors.items():
        module = unet.get_submodule(name.removesuffix(".processor"))
        if isinstance(proc, IPAdapterAttnProcessor2_0) and not isinstance(proc, TagRegionAttnProcessor):
            proc = TagRegionAttnProcessor.replacing(proc, anchor=name.startswith(config.anchor_prefix))
        elif type(proc) in (AttnProcessor2_0, RegionAwareAttnProcessor2_0):
            # Self-attention only: the transformer blocks' attn1. (IP-Adapter Plus's resampler has
            # Attention modules too, called with the image features as context: never fused.)
            if fuse_self_attention and name.endswith("attn1.processor") and not module.is_cross_attention:
                module.fuse_projections(fuse=True)
                proc = RegionAwareFusedAttnProcessor2_0()
                fused += 1
            else:
                proc = RegionAwareAttnProcessor2_0()
        processors[name] = proc
    unet.set_attn_processor(processors)
    return fused
