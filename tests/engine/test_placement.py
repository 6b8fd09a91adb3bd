"""Tag placement (model/engine/placement/): the binding policy, the masks on planted maps, and the
attention processors against diffusers' (the rule prompt by prompt: test_placement_rule.py; end to
end: test_placement_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0, IPAdapterAttnProcessor2_0

from harness.injection import OpCounter, injection_runner
from model.contract.prompt import parse_prompt
from model.engine.pipeline import load_pipeline, pick_runtime
from model.engine.placement.binding import Binding, RegionConfig, bind_references
from model.engine.placement.masks import place
from model.engine.placement.processors import (
    RegionAwareFusedAttnProcessor2_0,
    TagRegionAttnProcessor,
    install_processors,
)
from model.engine.placement.state import RegionState
from model.serving.settings import Settings
from model.serving.setup import build_service


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
    park = torch.zeros(4, 6)
    park[:2, 2:4] = 1.0  # the place now has a map of its own: part of what lies between them
    masks = place(bindings, torch.stack([park, left, right]), RegionConfig()).masks
    assert torch.equal(masks[1], left) and torch.equal(masks[2], right)
    assert torch.equal(masks[0], 1 - left - right)  # the place: its region and what no subject claims
    assert torch.all(masks.sum(0) == 1)  # every pixel has exactly one owner


def test_masks_stay_on_the_maps_device() -> None:
    """On CUDA the maps live on the GPU: every mask tensor must be built there, not on the host.
    The meta device stands in for a second device on a CPU-only machine."""
    bindings = [Binding(0, "park", "place", (9,)), Binding(1, "woman", "subject", (3,)), Binding(2, None, "global")]
    masks = place(bindings, torch.zeros(2, 4, 6, device="meta"), RegionConfig()).masks
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


def test_without_references_the_region_path_is_diffusers_text_attention() -> None:
    """No reference: the stand-in image at scale 0 and a state with no bindings give exactly the
    parent's output at scale 0 (the adapter skipped), at every step of the pass."""
    attn = make_attention()
    parent, ours = parent_and_ours(1)
    parent.scale = ours.scale = [0.0]
    hidden, enc = inputs(1)
    region = RegionState([], RegionConfig(), steps=4, latent_hw=(4, 6))
    with torch.no_grad():
        expected = parent(attn, hidden, enc)
        for _ in range(2):
            assert torch.equal(ours(attn, hidden, enc, region=region), expected)
            region.end_step()


def test_reference_contributes_exactly_zero_outside_its_mask() -> None:
    attn = make_attention()
    _, ours = parent_and_ours(2)
    hidden, (text, ip) = inputs(2)
    bindings = [Binding(0, "woman", "subject", (3,)), Binding(1, "man", "subject", (5,))]
    left = torch.zeros(4, 6)
    left[:, :3] = 1.0
    weights = torch.stack([left, 1 - left])

    def run(references: torch.Tensor) -> torch.Tensor:
        # A state per pass: within a pass the references are fixed (their keys are cached).
        region = RegionState(bindings, RegionConfig(warmup_fraction=0.0), steps=4, latent_hw=(4, 6))
        region.weights, region.step = weights, 1
        return ours(attn, hidden, (text, [references]), region=region)

    with torch.no_grad():
        base = run(ip[0] * 0)
        for changed in (0, 1):
            bumped = ip[0].clone()
            bumped[:, changed] += 5.0
            delta = run(bumped) - run(ip[0])
            inside = weights[changed].flatten().bool()
            assert torch.all(delta[:, ~inside] == 0)
            assert delta[:, inside].abs().sum() > 0
    assert base.shape == hidden.shape


def test_adapter_keys_are_computed_once_per_pass() -> None:
    """The adapter's keys and values are a function of the pass's fixed references: a second
    step reuses them instead of running the adapter's projections again."""
    attn = make_attention()
    _, ours = parent_and_ours(3)
    ours.anchor = False  # so that the masks stay the planted ones from step to step
    hidden, enc = inputs(3)
    region = planted_region(warmup=False)
    calls = []
    hook = ours.to_k_ip[0].register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        first = ours(attn, hidden, enc, region=region)
        region.end_step()
        second = ours(attn, hidden, enc, region=region)
    hook.remove()
    assert len(calls) == 1 and torch.equal(first, second)


def test_text_keys_are_computed_once_per_pass_and_again_for_another_prompt() -> None:
    """The text's keys and values are a function of the pass's fixed prompt tensor: later steps
    reuse them; another prompt tensor (even of the same shape) is projected afresh."""
    attn = make_attention()
    _, ours = parent_and_ours(3)
    ours.anchor = False
    hidden, (text, ip) = inputs(3)
    region = planted_region(warmup=False)
    calls = []
    hooks = [layer.register_forward_hook(lambda *args: calls.append(1)) for layer in (attn.to_k, attn.to_v)]
    other = text + 1.0
    with torch.no_grad():
        first = ours(attn, hidden, (text, ip), region=region)
        region.end_step()
        second = ours(attn, hidden, (text, ip), region=region)
        assert len(calls) == 2 and torch.equal(first, second)
        changed = ours(attn, hidden, (other, ip), region=region)
        fresh = ours(attn, hidden, (other, ip), region=planted_region(warmup=False))
    for hook in hooks:
        hook.remove()
    assert len(calls) == 6 and torch.equal(changed, fresh) and not torch.equal(changed, first)


def test_warmup_turns_tagged_references_off_and_anchor_records_maps() -> None:
    attn = make_attention()
    _, ours = parent_and_ours(2)
    hidden, enc = inputs(2)
    bindings = [Binding(0, "woman", "subject", (3,)), Binding(1, None, "global")]
    region = RegionState(bindings, RegionConfig(warmup_fraction=0.5), steps=6, latent_hw=(4, 6))
    masks = region.layer_masks(24, torch.device("cpu"))
    assert masks[0, 0].sum() == 0 and torch.all(masks[0, 1] == 1)
    # Warm-up is 3 steps; maps are recorded from the last warm-up step on.
    recording = []
    with torch.no_grad():
        for _ in range(6):
            recording.append(region.records)
            ours(attn, hidden, enc, region=region)
            if region.step == 2:  # before the last warm-up step ends, no map has been made
                assert region.weights is None
            region.end_step()
    assert recording == [False, False, True, True, True, True]
    assert region.weights is not None and region.weights.shape == (2, 4, 6)
    shares = region.shares()
    assert 0 < shares[0] <= 1 and shares[1] == 1.0


def planted_region(warmup: bool) -> RegionState:
    """Three references (subject, place, global) with planted subject masks, in warm-up or not."""
    bindings = [Binding(0, "woman", "subject", (3,)), Binding(1, "park", "place", (5,)), Binding(2, None, "global")]
    region = RegionState(bindings, RegionConfig(warmup_fraction=0.5), steps=4, latent_hw=(4, 6))
    left = torch.zeros(4, 6)
    left[:, :2] = 1.0
    region.weights = torch.stack([left, 1 - left, torch.ones(4, 6)])
    region.step = 0 if warmup else 2
    return region


@pytest.mark.parametrize("warmup", [False, True])
def test_batched_path_equals_diffusers_masked_path(warmup: bool) -> None:
    """The one-matmul path over all references computes what diffusers' per-image masked path
    (`ip_adapter_masks`) computes with the same masks: fp32, 3 images, within 1e-5."""
    attn = make_attention()
    parent, ours = parent_and_ours(3)
    hidden, enc = inputs(3)
    region = planted_region(warmup)
    assert ours.fast_path_fits(attn, None)
    with torch.no_grad():
        masks = region.layer_masks(24, torch.device("cpu"))
        expected = parent(attn, hidden, enc, ip_adapter_masks=[masks])
        got = ours(attn, hidden, enc, region=region)
    assert torch.allclose(got, expected, atol=1e-5)


def test_warmup_without_a_global_reference_skips_the_adapter() -> None:
    region = RegionState([Binding(0, "woman", "subject", (3,))], RegionConfig(), steps=4, latent_hw=(4, 6))
    assert region.ip_weights(24, torch.device("cpu"), torch.float32, 0.7) is None
    attn = make_attention()
    parent, ours = parent_and_ours(1)
    hidden, (text, ip) = inputs(1)
    with torch.no_grad():
        got = ours(attn, hidden, (text, ip), region=region)
        expected = parent(attn, hidden, (text, [ip[0]]), ip_adapter_masks=[torch.zeros(1, 1, 4, 6)])
    assert torch.allclose(got, expected, atol=1e-5)


def test_other_layers_keep_diffusers_masked_path() -> None:
    """A layer outside the batched path's case (here one with a residual connection) goes through
    the parent's own masked path, with the same result."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, residual_connection=True)
    parent, ours = parent_and_ours(3)
    hidden, enc = inputs(3)
    region = planted_region(warmup=False)
    assert not ours.fast_path_fits(attn, None)
    with torch.no_grad():
        expected = parent(attn, hidden, enc, ip_adapter_masks=[region.layer_masks(24, torch.device("cpu"))])
        got = ours(attn, hidden, enc, region=region)
    assert torch.allclose(got, expected, atol=1e-5)


def test_tag_localization_adds_no_host_sync_to_the_step_loop(tiny_weights: Path) -> None:
    """Counted on the real pipeline with the installed processors: the tag-localized denoising
    loop (anchor maps, masks every step, 3 references) reads no tensor value on the host and
    makes no tensor from Python data more often than plain IP-Adapter does."""
    service = build_service(Settings(weights_dir=tiny_weights, steps=4, device="cpu"))
    run = injection_runner(service, steps=4, width=256, height=256)
    with OpCounter() as localized:
        region = run(True)
    with OpCounter() as plain:
        run(False)
    assert region.weights is not None and region.step == 4  # the anchors recorded and masks were made
    assert localized.host_data == plain.host_data, f"localized {localized.host_data} vs plain {plain.host_data}"


@pytest.mark.parametrize(("rescale", "residual"), [(1.0, False), (2.0, False), (1.0, True)])
def test_fused_self_attention_equals_diffusers_exactly(rescale: float, residual: bool) -> None:
    """The fused self-attention without the parent's identity steps (eval dropout, / 1.0) gives
    the parent's output bit for bit, and divides as the parent does when a layer rescales; a layer
    with a residual connection keeps the parent's path."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8, rescale_output_factor=rescale, residual_connection=residual)
    attn.fuse_projections(fuse=True)
    attn.eval()
    hidden = torch.randn(2, 24, 32)
    with torch.no_grad():
        expected = FusedAttnProcessor2_0()(attn, hidden)
        dropout_calls = []
        attn.to_out[1].register_forward_hook(lambda *_: dropout_calls.append(1))
        got = RegionAwareFusedAttnProcessor2_0()(attn, hidden, region=None)
    assert torch.equal(got, expected)
    assert len(dropout_calls) == (1 if residual else 0)  # the parent's path calls its dropout


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
