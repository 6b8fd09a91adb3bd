"""Tag localization: token positions, mask derivation, and the processor against diffusers'."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from transformers import CLIPTokenizer

from model.pipeline import load_pipeline, pick_runtime
from model.prompt import parse_prompt
from model.regions import (
    Binding,
    RegionConfig,
    RegionState,
    TagRegionAttnProcessor,
    bind_references,
    install_processors,
    masks_from_maps,
)
from model.tokens import mention_positions
from model.weights import SDXL_BASE


@pytest.fixture(scope="module")
def tokenizers(tiny_weights: Path) -> list[CLIPTokenizer]:
    base = tiny_weights / SDXL_BASE.folder
    return [CLIPTokenizer.from_pretrained(base / f, model_max_length=77) for f in ("tokenizer", "tokenizer_2")]


POSITIONS = [
    ("a portrait of @woman and @man in @park", {"woman": ["woman</w>"], "man": ["man</w>"], "park": ["park</w>"]}),
    ("@woman's sweater, @woman's bangles", {"woman": ["woman</w>", "woman</w>"]}),
    ("@catdog2 runs.", {"catdog2": ["cat", "dog</w>", "2</w>"]}),
    ("(@Bob), @Bob!", {"Bob": ["bob</w>", "bob</w>"]}),
    ("word " * 80 + "@late", {}),  # past the 77-token window: the encoder never sees it
    ("word " * 70 + "@edge then more words after it", {"edge": ["edge</w>"]}),
]


@pytest.mark.parametrize(("prompt", "expected"), POSITIONS, ids=range(len(POSITIONS)))
def test_mention_token_positions_on_the_real_clip_tokenizer(tokenizers: list, prompt: str, expected: dict) -> None:
    parsed = parse_prompt(prompt)
    found = [mention_positions(parsed, t) for t in tokenizers]
    assert found[0] == found[1]  # both SDXL tokenizers agree
    ids = tokenizers[0](parsed.text, truncation=True, max_length=77)["input_ids"]
    tokens = {tag: [tokenizers[0].convert_ids_to_tokens(ids[p]) for p in pos] for tag, pos in found[0].items()}
    assert tokens == expected


def test_bindings_subject_place_global() -> None:
    parsed = parse_prompt("@woman and @man standing in @park")
    positions = {"woman": (1,), "man": (3,), "park": (6,)}
    kinds = [b.kind for b in bind_references(["park", "woman", "man", None], parsed, positions)]
    assert kinds == ["place", "subject", "subject", "global"]
    # No subject: the place is everywhere.
    assert [b.kind for b in bind_references(["park"], parse_prompt("a dog in @park"), {"park": (4,)})] == ["global"]


def test_planted_maps_give_exclusive_masks() -> None:
    bindings = [
        Binding(0, "park", "place", (9,)),
        Binding(1, "woman", "subject", (3,)),
        Binding(2, "man", "subject", (5,)),
    ]
    left = torch.zeros(4, 6)
    left[:, :2] = 1.0
    right = torch.zeros(4, 6)
    right[:, 4:] = 1.0
    masks = masks_from_maps(bindings, {1: left, 2: right}, threshold=0.35, hw=(4, 6))
    assert torch.equal(masks[1], left) and torch.equal(masks[2], right)
    assert torch.equal(masks[0], 1 - left - right)  # the place: what no subject claims
    assert torch.all(masks.sum(0) == 1)  # every pixel has exactly one owner


def test_masks_stay_on_the_maps_device() -> None:
    """On CUDA the maps live on the GPU: every mask tensor must be built there, not on the host.
    The meta device stands in for a second device on a CPU-only machine."""
    bindings = [Binding(0, "park", "place", (9,)), Binding(1, "woman", "subject", (3,)), Binding(2, None, "global")]
    maps = {1: torch.zeros(4, 6, device="meta")}
    masks = masks_from_maps(bindings, maps, threshold=0.35, hw=(4, 6))
    assert masks.device.type == "meta" and masks.shape == (3, 4, 6)


def make_attention(hidden: int = 32, text_dim: int = 24) -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=hidden, cross_attention_dim=text_dim, heads=4, dim_head=8)


def parent_and_ours(n_images: int, hidden: int = 32, text_dim: int = 24) -> tuple:
    parent = IPAdapterAttnProcessor2_0(hidden, text_dim, num_tokens=(16,), scale=0.7)
    torch.nn.init.normal_(parent.to_k_ip[0].weight)
    torch.nn.init.normal_(parent.to_v_ip[0].weight)
    return parent, TagRegionAttnProcessor.replacing(parent, anchor=True)


def inputs(n_images: int, h: int = 4, w: int = 6) -> tuple:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, h * w, 32, generator=g)
    text = torch.randn(2, 10, 24, generator=g)
    ip = [torch.randn(2, n_images, 16, 24, generator=g)]
    return hidden, (text, ip)


def test_all_ones_mask_equals_diffusers_processor() -> None:
    attn = make_attention()
    parent, ours = parent_and_ours(1)
    hidden, enc = inputs(1)
    region = RegionState([Binding(0, None, "global")], RegionConfig(), steps=4, latent_hw=(4, 6))
    with torch.no_grad():
        expected = parent(attn, hidden, enc)
        got = ours(attn, hidden, enc, region=region)
        plain = ours(attn, hidden, enc)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(plain, expected)


def test_reference_contributes_exactly_zero_outside_its_mask() -> None:
    attn = make_attention()
    _, ours = parent_and_ours(2)
    hidden, (text, ip) = inputs(2)
    bindings = [Binding(0, "woman", "subject", (3,)), Binding(1, "man", "subject", (5,))]
    region = RegionState(bindings, RegionConfig(warmup_fraction=0.0), steps=4, latent_hw=(4, 6))
    left = torch.zeros(4, 6)
    left[:, :3] = 1.0
    region.weights = torch.stack([left, 1 - left])
    region.step = 1
    with torch.no_grad():
        base = ours(attn, hidden, (text, [ip[0] * 0]), region=region)
        for changed in (0, 1):
            bumped = ip[0].clone()
            bumped[:, changed] += 5.0
            delta = ours(attn, hidden, (text, [bumped]), region=region) - ours(attn, hidden, (text, ip), region=region)
            inside = region.weights[changed].flatten().bool()
            assert torch.all(delta[:, ~inside] == 0)
            assert delta[:, inside].abs().sum() > 0
    assert base.shape == hidden.shape


def test_warmup_turns_tagged_references_off_and_anchor_records_maps() -> None:
    attn = make_attention()
    _, ours = parent_and_ours(2)
    hidden, enc = inputs(2)
    bindings = [Binding(0, "woman", "subject", (3,)), Binding(1, None, "global")]
    region = RegionState(bindings, RegionConfig(warmup_fraction=0.5), steps=4, latent_hw=(4, 6))
    masks = region.layer_masks(24, torch.device("cpu"))
    assert masks[0, 0].sum() == 0 and torch.all(masks[0, 1] == 1)
    with torch.no_grad():
        ours(attn, hidden, enc, region=region)
    region.end_step()
    assert region.weights is not None and region.weights.shape == (2, 4, 6)
    shares = region.shares()
    assert 0 < shares[0] <= 1 and shares[1] == 1.0


def test_fused_self_attention_gives_the_same_latents(tiny_weights: Path) -> None:
    """QKV fusion on self-attention only: the cross-attention keeps its IP-Adapter processors, and
    the denoised latents match the unfused ones (fp32)."""
    pipe = load_pipeline(tiny_weights, pick_runtime("cpu"))
    pipe.set_ip_adapter_scale(0.6)

    def latents() -> torch.Tensor:
        features = torch.Generator().manual_seed(3)
        dim = pipe.image_encoder.config.hidden_size
        tokens = (pipe.image_encoder.config.image_size // pipe.image_encoder.config.patch_size) ** 2 + 1
        image_embeds = torch.randn(2, 1, tokens, dim, generator=features)
        return pipe(
            prompt="a cat",
            width=256,
            height=256,
            num_inference_steps=2,
            ip_adapter_image_embeds=[image_embeds],
            generator=torch.Generator().manual_seed(1),
            output_type="latent",
        ).images

    assert install_processors(pipe.unet, RegionConfig(), fuse_self_attention=False) == 0
    plain = latents()
    fused = install_processors(pipe.unet, RegionConfig(), fuse_self_attention=True)
    kinds = {name: type(p).__name__ for name, p in pipe.unet.attn_processors.items()}
    assert fused == sum(name.endswith("attn1.processor") for name in kinds) > 0
    for name, kind in kinds.items():
        if name.endswith("attn1.processor"):
            assert kind == "RegionAwareFusedAttnProcessor2_0"
        elif name.endswith("attn2.processor"):
            assert kind == "TagRegionAttnProcessor"
        else:  # IP-Adapter Plus's resampler: attention over image features, left as it was
            assert kind == "RegionAwareAttnProcessor2_0", name
    assert torch.allclose(latents(), plain, atol=1e-5)
