"""The full-size random architectures are the published ones: parameter counts built on the meta
device (no memory, no download) against the counts the model cards and files give."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from model.engine.weights import weights_label
from scripts.make_random_weights import FULL, SKELETON, building, ip_adapter_shapes, make_unet, make_vae
from tests.conftest import build_log


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def full_unet() -> torch.nn.Module:
    with building("meta", torch.float16):
        return make_unet(FULL)


def test_full_unet_is_sdxl_base(full_unet: torch.nn.Module) -> None:
    # SDXL base's UNet: 2,567,463,684 parameters (unet/diffusion_pytorch_model.fp16.safetensors, 5.1 GB).
    assert parameters(full_unet) == 2_567_463_684
    assert full_unet.config.cross_attention_dim == 2048 and full_unet.config.addition_time_embed_dim == 256
    cross = [n for n in full_unet.attn_processors if n.endswith("attn2.processor")]
    assert len(cross) == 70  # the layers IP-Adapter adds a key/value pair to


def test_full_encoders_and_vae_are_the_published_ones() -> None:
    with building("meta", torch.float16):
        vae = make_vae(FULL, force_upcast=False)
        text = CLIPTextModel(CLIPTextConfig(**FULL.text_encoder))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**FULL.text_encoder_2))
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**FULL.image_encoder))
    assert parameters(vae) == 83_653_863  # SDXL's VAE (the fp16-fix has the same architecture)
    assert parameters(text) == 123_060_480  # CLIP ViT-L/14 text tower
    assert parameters(text_2) == 694_659_840  # OpenCLIP ViT-bigG/14 text tower with projection
    # h94/IP-Adapter's model card: "OpenCLIP-ViT-H-14 with 632.08M parameter".
    assert round(parameters(vision) / 1e6, 2) == 632.08


def test_full_ip_adapter_matches_the_published_file(full_unet: torch.nn.Module) -> None:
    shapes = ip_adapter_shapes(full_unet, FULL.image_encoder["hidden_size"], FULL.resampler_dim)
    # ip-adapter-plus_sdxl_vit-h.safetensors is 848 MB of fp16.
    assert round(sum(math.prod(s) for s in shapes.values()) * 2 / 1e6) == 847
    assert sum(1 for k in shapes if k.endswith("to_k_ip.weight")) == 70
    assert shapes["image_proj.proj_out.weight"] == (2048, 1280)


def test_weights_label_says_what_the_folder_holds(tiny_weights, tmp_path) -> None:
    assert weights_label(tiny_weights) == "tiny random"
    assert weights_label(tmp_path) == "real"
    (tmp_path / FULL.marker).write_text("full")
    assert weights_label(tmp_path) == "full-size random"


def test_the_build_says_only_what_it_wrote(tiny_weights: Path) -> None:
    # The README's first command runs this script on a fresh machine: no library warning that
    # says nothing about it (diffusers' imports, model/serving/logs.py), no bar per saved model.
    assert build_log(tiny_weights).read_text().splitlines() == [f"tiny random weights written to {tiny_weights}"]


def test_skeleton_unet_has_the_full_unets_structure(full_unet: torch.nn.Module) -> None:
    # What scripts/lab/host_overhead.py relies on: the same modules, so the same calls per step.
    with building("meta", torch.float32):
        skeleton = make_unet(SKELETON)

    def structure(unet: torch.nn.Module) -> list[tuple[str, str]]:
        return [(name, type(module).__name__) for name, module in unet.named_modules()]

    assert structure(skeleton) == structure(full_unet)
    assert parameters(skeleton) < parameters(full_unet) / 400  # 6.2 M against 2.57 B
