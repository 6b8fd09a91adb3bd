"""Build random SDXL + IP-Adapter Plus weights in the real repositories' file layout.

    python scripts/make_random_weights.py OUT_DIR [--size tiny|skeleton|full] [--device cuda]

tiny (default): miniature architectures for the tests; offline, a few seconds on a CPU.
skeleton: tiny, except that the UNet has SDXL's full structure (every block and all 70 transformer
layers) at tiny widths: it dispatches the full UNet's ops with almost no arithmetic, so that a
CPU measures the host's work per step (scripts/lab/host_overhead.py).
full: the published architectures (SDXL base UNet, both text encoders, the fp16-fix VAE, ViT-H/14
and IP-Adapter Plus SDXL, SDXL-Lightning's rank-64 LoRA) with random values, about 9 GB in fp16:
real GPU timings without any download. Build on the GPU with --device cuda (minutes on a CPU).
The folders match what scripts/download_weights.py fetches (see model/engine/weights.py), so one loading
path serves all three. The CLIP tokenizers are real: built from the BPE vocabulary that the
open-clip-torch package ships. Random weights make noise images: a marker file says which kind.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# The project's modules first: importing `model` drops the libraries' vacuous warnings
# (model/serving/logs.py) before diffusers, which emits one at import time, is imported.
# isort: off
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.engine.weights import (
    FULL_RANDOM_MARKER,
    IMAGE_ENCODER_SUBFOLDER,
    IP_ADAPTER,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT,
    LIGHTNING_LORA_WEIGHT,
    SAFETY_CHECKER,
    SAFETY_CHECKER_WEIGHT,
    SDXL_BASE,
    SDXL_LIGHTNING,
    SDXL_VAE_FP16_FIX,
    TINY_MARKER,
)
# isort: on

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from safetensors.torch import save_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.utils import logging as transformers_logging

log = logging.getLogger("make_random_weights")

NUM_IP_TOKENS = 16  # IP-Adapter Plus's resampler queries
RESAMPLER_DEPTH = 4
_CLIP_TEXT = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407}


@dataclass(frozen=True)
class Arch:
    """Every shape the builder needs, for one size of the model family."""

    name: str
    marker: str
    unet: dict[str, Any]  # UNet2DConditionModel arguments
    vae: dict[str, Any]  # AutoencoderKL arguments (force_upcast is set per VAE)
    text_encoder: dict[str, Any]  # CLIPTextConfig arguments
    text_encoder_2: dict[str, Any]
    image_encoder: dict[str, Any]  # CLIPVisionConfig arguments
    resampler_dim: int  # diffusers infers the resampler's heads as dim // 64
    lora_rank: int
    init_std: float  # of the IP-Adapter and LoRA weights
    # Build in this dtype: fp32 keeps the tiny values identical across versions; fp16 halves the
    # memory of the full build.
    build_dtype: torch.dtype = torch.float32
    # The safety checker's vision tower (CLIPVisionConfig arguments) and its projection_dim.
    safety_checker: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 32,
            "image_size": 32,
            "patch_size": 8,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "projection_dim": 16,
        }
    )


_SDXL_UNET_COMMON = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
}
_VAE_COMMON = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,  # four levels: the latent is 1/8 of the image
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}

_TINY_TEXT = _CLIP_TEXT | {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
    "hidden_act": "gelu",
    "pad_token_id": 49407,
}
# SDXL's UNet shape in miniature: no attention at full resolution, deeper at the bottom.
TINY = Arch(
    name="tiny",
    marker=TINY_MARKER,
    unet=_SDXL_UNET_COMMON
    | {
        "block_out_channels": (16, 32, 64),
        "layers_per_block": 1,
        "transformer_layers_per_block": (1, 1, 2),
        "attention_head_dim": (2, 4, 8),
        "norm_num_groups": 8,
        "cross_attention_dim": 64,  # both text encoders' hidden sizes, concatenated
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + 32,  # 6 size/crop numbers + pooled text
    },
    vae=_VAE_COMMON | {"block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 8},
    text_encoder=_TINY_TEXT,
    text_encoder_2=_TINY_TEXT,
    image_encoder={
        "hidden_size": 32,
        "image_size": 224,
        "patch_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "projection_dim": 32,
    },
    resampler_dim=64,
    lora_rank=4,
    init_std=0.05,
)

# The published configurations: stabilityai/stable-diffusion-xl-base-1.0 (unet, text_encoder,
# text_encoder_2), madebyollin/sdxl-vae-fp16-fix, h94/IP-Adapter models/image_encoder (OpenCLIP
# ViT-H/14, 632.08M parameters) and IP-Adapter Plus SDXL's resampler (dim 1280, 20 heads).
FULL = Arch(
    name="full",
    marker=FULL_RANDOM_MARKER,
    unet=_SDXL_UNET_COMMON
    | {
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "norm_num_groups": 32,
        "cross_attention_dim": 2048,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    vae=_VAE_COMMON | {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32},
    text_encoder=_CLIP_TEXT
    | {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
        "pad_token_id": 1,
    },
    text_encoder_2=_CLIP_TEXT
    | {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "projection_dim": 1280,
        "hidden_act": "gelu",
        "pad_token_id": 1,
    },
    image_encoder={
        "hidden_size": 1280,
        "image_size": 224,
        "patch_size": 14,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "intermediate_size": 5120,
        "projection_dim": 1024,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    },
    resampler_dim=1280,
    lora_rank=64,  # SDXL-Lightning's LoRA rank
    init_std=0.02,
    build_dtype=torch.float16,
    # CompVis/stable-diffusion-safety-checker: CLIP ViT-L/14 at 224 px, projection 768.
    safety_checker={
        "hidden_size": 1024,
        "image_size": 224,
        "patch_size": 14,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
    },
)
# SDXL's UNet structure at tiny widths: the same modules and calls as FULL's UNet, so the same
# host work per step (tests/engine/test_random_weights.py checks the structure against FULL's).
SKELETON = replace(
    TINY,
    name="skeleton",
    unet=TINY.unet | {key: FULL.unet[key] for key in ("layers_per_block", "transformer_layers_per_block")},
)
ARCHS = {arch.name: arch for arch in (TINY, SKELETON, FULL)}


def bpe_vocab_path() -> Path:
    """The CLIP BPE merges file inside open-clip-torch (found without importing the package,
    which would need torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open-clip-torch is not installed: pip install --no-deps open-clip-torch")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character map (as in CLIP's simple_tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_clip_vocab(folder: Path) -> None:
    """vocab.json and merges.txt of OpenAI CLIP (49408 tokens), from the BPE merges file."""
    with gzip.open(bpe_vocab_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def make_tokenizers(scratch: Path) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """SDXL's two tokenizers: the same vocabulary, padded with <|endoftext|> and "!"."""
    write_clip_vocab(scratch)
    tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=77, pad_token="<|endoftext|>")
    tokenizer_2 = CLIPTokenizer.from_pretrained(scratch, model_max_length=77, pad_token="!")
    return tokenizer, tokenizer_2


def make_unet(arch: Arch) -> UNet2DConditionModel:
    return UNet2DConditionModel(**arch.unet)


def make_vae(arch: Arch, force_upcast: bool) -> AutoencoderKL:
    return AutoencoderKL(**arch.vae, force_upcast=force_upcast)


def make_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's scheduler configuration."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )


def ip_adapter_shapes(unet: UNet2DConditionModel, image_hidden: int, dim: int) -> dict[str, tuple[int, ...]]:
    """IP-Adapter Plus's tensors in h94's original key layout (image_proj.*, ip_adapter.*)."""
    cross, inner_ff = unet.config.cross_attention_dim, 4 * dim
    shapes: dict[str, tuple[int, ...]] = {
        "image_proj.latents": (1, NUM_IP_TOKENS, dim),
        "image_proj.proj_in.weight": (dim, image_hidden),
        "image_proj.proj_in.bias": (dim,),
        "image_proj.proj_out.weight": (cross, dim),
        "image_proj.proj_out.bias": (cross,),
        "image_proj.norm_out.weight": (cross,),
        "image_proj.norm_out.bias": (cross,),
    }
    for i in range(RESAMPLER_DEPTH):
        p = f"image_proj.layers.{i}"
        shapes |= {
            f"{p}.0.norm1.weight": (dim,),
            f"{p}.0.norm1.bias": (dim,),
            f"{p}.0.norm2.weight": (dim,),
            f"{p}.0.norm2.bias": (dim,),
            f"{p}.0.to_q.weight": (dim, dim),
            f"{p}.0.to_kv.weight": (2 * dim, dim),
            f"{p}.0.to_out.weight": (dim, dim),
            f"{p}.1.0.weight": (dim,),  # the feed-forward's LayerNorm
            f"{p}.1.0.bias": (dim,),
            f"{p}.1.1.weight": (inner_ff, dim),
            f"{p}.1.3.weight": (dim, inner_ff),
        }
    # One to_k_ip/to_v_ip pair per cross-attention layer, numbered 1, 3, 5, ... in UNet order.
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = name.split(".")[0]
        if block == "mid_block":
            hidden = unet.config.block_out_channels[-1]
        elif block == "up_blocks":
            hidden = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
        else:
            hidden = unet.config.block_out_channels[int(name.split(".")[1])]
        shapes[f"ip_adapter.{key_id}.to_k_ip.weight"] = (hidden, cross)
        shapes[f"ip_adapter.{key_id}.to_v_ip.weight"] = (hidden, cross)
        key_id += 2
    return shapes


def ip_adapter_state_dict(unet: UNet2DConditionModel, arch: Arch) -> dict[str, torch.Tensor]:
    """Random IP-Adapter Plus weights (fp16): LayerNorms at identity, biases zero."""
    g = torch.Generator().manual_seed(1)
    sd = {}
    for key, shape in ip_adapter_shapes(unet, arch.image_encoder["hidden_size"], arch.resampler_dim).items():
        if key.endswith(".bias"):
            sd[key] = torch.zeros(shape)
        elif "norm" in key or key.endswith(".1.0.weight"):
            sd[key] = torch.ones(shape)
        else:
            sd[key] = torch.randn(*shape, generator=g) * arch.init_std
            if key == "image_proj.latents":
                sd[key] /= arch.resampler_dim**0.5
    return {k: v.to(torch.float16).contiguous() for k, v in sd.items()}


def lightning_lora_state_dict(unet: UNet2DConditionModel, rank: int, std: float) -> dict[str, torch.Tensor]:
    """A LoRA on every transformer attention projection, in diffusers' PEFT key format. The
    published file's keys could not be read offline; a test checks that the same LoRA in kohya's
    layouts (diffusers' or the SGM UNet's module names) fuses into the same UNet."""
    g = torch.Generator().manual_seed(2)
    sd = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ".transformer_blocks." in name and ".attn" in name:
            sd[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * std
            sd[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * std
    return {k: v.to(torch.float16).contiguous() for k, v in sd.items()}


def write_safety_checker(folder: Path, arch: Arch) -> None:
    """diffusers' StableDiffusionSafetyChecker with random values, in the files of the pinned
    CompVis commit (config.json, preprocessor_config.json, pytorch_model.bin). Every concept's
    threshold is 1.0, above any cosine similarity, so the stand-in flags nothing; tests lower the
    thresholds to make it flag."""
    vision = dict(arch.safety_checker)
    projection = vision.pop("projection_dim")
    config = CLIPConfig(text_config=arch.text_encoder, vision_config=vision, projection_dim=projection)
    with building("cpu", torch.float32):  # the published file is fp32
        model = StableDiffusionSafetyChecker(config)
        torch.nn.init.normal_(model.concept_embeds)
        torch.nn.init.normal_(model.special_care_embeds)
    model.concept_embeds_weights.data.fill_(1.0)
    model.special_care_embeds_weights.data.fill_(1.0)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    size = vision["image_size"]
    CLIPImageProcessorPil(size=size, crop_size=size).save_pretrained(folder)
    torch.save(model.state_dict(), folder / SAFETY_CHECKER_WEIGHT)


@contextlib.contextmanager
def building(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Create modules directly on `device` in `dtype` (the full UNet alone is 2.6B parameters)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build(out: Path, arch: Arch = TINY, device: str = "cpu") -> None:
    """Write the repositories' folders under `out` (the three, SDXL-Lightning for turbo and the
    safety checker)."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, tokenizer_2 = make_tokenizers(Path(scratch))
    with building(device, arch.build_dtype):
        unet = make_unet(arch)
        pipe = StableDiffusionXLPipeline(
            vae=make_vae(arch, force_upcast=True),
            text_encoder=CLIPTextModel(CLIPTextConfig(**arch.text_encoder)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=make_scheduler(),
        )
    pipe.to(torch.float16)
    base = out / SDXL_BASE.folder
    pipe.save_pretrained(base, variant="fp16")
    del pipe
    for folder in ("tokenizer", "tokenizer_2"):
        # The real repository ships vocab.json + merges.txt (no tokenizer.json): load the same way.
        (base / folder / "tokenizer.json").unlink(missing_ok=True)
        write_clip_vocab(base / folder)
    with building(device, arch.build_dtype):
        make_vae(arch, force_upcast=False).save_pretrained(out / SDXL_VAE_FP16_FIX.folder)

    ip_dir = out / IP_ADAPTER.folder
    (ip_dir / IP_ADAPTER_SUBFOLDER).mkdir(parents=True, exist_ok=True)
    save_file(ip_adapter_state_dict(unet, arch), ip_dir / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHT)
    with building(device, arch.build_dtype):
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**arch.image_encoder))
    vision.to(torch.float16).save_pretrained(ip_dir / IMAGE_ENCODER_SUBFOLDER)
    del vision
    lightning = out / SDXL_LIGHTNING.folder
    lightning.mkdir(parents=True, exist_ok=True)
    save_file(lightning_lora_state_dict(unet, arch.lora_rank, arch.init_std), lightning / LIGHTNING_LORA_WEIGHT)
    write_safety_checker(out / SAFETY_CHECKER.folder, arch)
    (out / arch.marker).write_text(
        f"{arch.name} random weights from scripts/make_random_weights.py: images are noise; "
        "for tests and timings only.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(ARCHS), default="tiny")
    parser.add_argument("--device", default="cpu", help="where to create the modules (cuda is much faster for full)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    transformers_logging.disable_progress_bar()  # a bar per saved model says nothing here
    build(args.out_dir, ARCHS[args.size], args.device)
    log.info("%s random weights written to %s", args.size, args.out_dir)


if __name__ == "__main__":
    main()
