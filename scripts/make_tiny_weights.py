"""Build tiny random SDXL + IP-Adapter Plus weights in the real repositories' file layout.

    python scripts/make_tiny_weights.py OUT_DIR

The folders match what scripts/download_weights.py fetches (see model/weights.py), so one loading
path serves both. The CLIP tokenizers are real: built from the BPE vocabulary that the
open-clip-torch package ships. Everything is offline and takes a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.weights import (
    IMAGE_ENCODER_SUBFOLDER,
    IP_ADAPTER,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT,
    LIGHTNING_LORA_WEIGHT,
    SDXL_BASE,
    SDXL_LIGHTNING,
    SDXL_VAE_FP16_FIX,
    TINY_MARKER,
)

log = logging.getLogger("make_tiny_weights")

TEXT_HIDDEN = 32  # each text encoder; SDXL's UNet sees both concatenated
CROSS_DIM = 2 * TEXT_HIDDEN
IMAGE_HIDDEN = 32
RESAMPLER_DIM = 64  # diffusers infers the resampler's heads as dim // 64
NUM_IP_TOKENS = 16  # as in IP-Adapter Plus
TIME_EMBED = 8


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


def text_config() -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def make_unet() -> UNet2DConditionModel:
    """SDXL's UNet shape in miniature: no attention at full resolution, deeper at the bottom."""
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 8),
        norm_num_groups=8,
        cross_attention_dim=CROSS_DIM,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_HIDDEN,
    )


def make_vae(force_upcast: bool) -> AutoencoderKL:
    """Four levels, so that the latent is 1/8 of the image as in SDXL."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=force_upcast,
    )


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


def ip_adapter_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """IP-Adapter Plus weights in h94's original key layout (image_proj.*, ip_adapter.*)."""
    g = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    dim, inner_ff = RESAMPLER_DIM, 4 * RESAMPLER_DIM
    sd: dict[str, torch.Tensor] = {
        "image_proj.latents": rand(1, NUM_IP_TOKENS, dim) / dim**0.5,
        "image_proj.proj_in.weight": rand(dim, IMAGE_HIDDEN),
        "image_proj.proj_in.bias": torch.zeros(dim),
        "image_proj.proj_out.weight": rand(CROSS_DIM, dim),
        "image_proj.proj_out.bias": torch.zeros(CROSS_DIM),
        "image_proj.norm_out.weight": torch.ones(CROSS_DIM),
        "image_proj.norm_out.bias": torch.zeros(CROSS_DIM),
    }
    for i in range(4):  # the Plus resampler's depth
        p = f"image_proj.layers.{i}"
        sd |= {
            f"{p}.0.norm1.weight": torch.ones(dim),
            f"{p}.0.norm1.bias": torch.zeros(dim),
            f"{p}.0.norm2.weight": torch.ones(dim),
            f"{p}.0.norm2.bias": torch.zeros(dim),
            f"{p}.0.to_q.weight": rand(dim, dim),
            f"{p}.0.to_kv.weight": rand(2 * dim, dim),
            f"{p}.0.to_out.weight": rand(dim, dim),
            f"{p}.1.0.weight": torch.ones(dim),
            f"{p}.1.0.bias": torch.zeros(dim),
            f"{p}.1.1.weight": rand(inner_ff, dim),
            f"{p}.1.3.weight": rand(dim, inner_ff),
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
        sd[f"ip_adapter.{key_id}.to_k_ip.weight"] = rand(hidden, CROSS_DIM)
        sd[f"ip_adapter.{key_id}.to_v_ip.weight"] = rand(hidden, CROSS_DIM)
        key_id += 2
    return {k: v.to(torch.float16).contiguous() for k, v in sd.items()}


def lightning_lora_state_dict(unet: UNet2DConditionModel, rank: int = 4) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every transformer attention projection, in diffusers' PEFT key format.
    (The real file is kohya-format; diffusers' load_lora_weights converts it on the same call.)"""
    sd = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ".transformer_blocks." in name and ".attn" in name:
            sd[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features) * 0.05
            sd[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank) * 0.05
    return {k: v.to(torch.float16).contiguous() for k, v in sd.items()}


def build(out: Path) -> None:
    """Write the repositories' folders under `out` (the three, and SDXL-Lightning for turbo)."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, tokenizer_2 = make_tokenizers(Path(scratch))
    unet = make_unet()
    pipe = StableDiffusionXLPipeline(
        vae=make_vae(force_upcast=True),
        text_encoder=CLIPTextModel(text_config()),
        text_encoder_2=CLIPTextModelWithProjection(text_config()),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=make_scheduler(),
    )
    pipe.to(torch.float16)
    base = out / SDXL_BASE.folder
    pipe.save_pretrained(base, variant="fp16")
    for folder in ("tokenizer", "tokenizer_2"):
        # The real repository ships vocab.json + merges.txt (no tokenizer.json): load the same way.
        (base / folder / "tokenizer.json").unlink(missing_ok=True)
        write_clip_vocab(base / folder)
    make_vae(force_upcast=False).save_pretrained(out / SDXL_VAE_FP16_FIX.folder)

    ip_dir = out / IP_ADAPTER.folder
    (ip_dir / IP_ADAPTER_SUBFOLDER).mkdir(parents=True, exist_ok=True)
    save_file(ip_adapter_state_dict(unet), ip_dir / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHT)
    vision = CLIPVisionConfig(
        hidden_size=IMAGE_HIDDEN,
        image_size=224,
        patch_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        projection_dim=IMAGE_HIDDEN,
    )
    CLIPVisionModelWithProjection(vision).to(torch.float16).save_pretrained(ip_dir / IMAGE_ENCODER_SUBFOLDER)
    lightning = out / SDXL_LIGHTNING.folder
    lightning.mkdir(parents=True, exist_ok=True)
    save_file(lightning_lora_state_dict(unet), lightning / LIGHTNING_LORA_WEIGHT)
    (out / TINY_MARKER).write_text(
        "Tiny random weights from scripts/make_tiny_weights.py: images are noise, for tests only.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.out_dir)
    log.info("tiny weights written to %s", args.out_dir)


if __name__ == "__main__":
    main()
