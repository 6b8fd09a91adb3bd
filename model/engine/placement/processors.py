"""The attention processors of tag placement: diffusers' IP-Adapter processor with each
reference's output restricted to its mask, and region-aware twins of the plain processors.

At every denoising step, the text cross-attention of the anchor layers records, for each tagged
subject or place, where its tag's tokens attend (the request's `RegionState` turns that into the
next step's masks); every IP-Adapter layer applies each reference only inside its mask, resized to
the layer's resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
)

from model.engine.placement.binding import RegionConfig
from model.engine.placement.state import RegionState


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
        # at once (seconds of a server's setup on a CPU).
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
