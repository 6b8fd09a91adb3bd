"""Where each weight lives: one layout table serves the downloader, the tiny builder and the loader.

Every entry is a Hugging Face repository mirrored under the weights folder in its own layout.
Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightsRepo:
    """A Hugging Face repository, the folder it lands in and the files taken from it."""

    repo_id: str
    folder: str
    allow_patterns: tuple[str, ...]
    # A file whose presence means the folder is complete (checked before loading).
    marker: str


SDXL_BASE = WeightsRepo(
    repo_id="stabilityai/stable-diffusion-xl-base-1.0",
    folder="stable-diffusion-xl-base-1.0",
    # The fp16 variant only; the fp16-fix VAE below replaces the base VAE.
    allow_patterns=(
        "model_index.json",
        "scheduler/*",
        "tokenizer/*",
        "tokenizer_2/*",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ),
    marker="unet/diffusion_pytorch_model.fp16.safetensors",
)
# SDXL's own VAE overflows in fp16 and diffusers then upcasts it to fp32; this one does not.
SDXL_VAE_FP16_FIX = WeightsRepo(
    repo_id="madebyollin/sdxl-vae-fp16-fix",
    folder="sdxl-vae-fp16-fix",
    allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
    marker="diffusion_pytorch_model.safetensors",
)
IP_ADAPTER_SUBFOLDER = "sdxl_models"
IP_ADAPTER_WEIGHT = "ip-adapter-plus_sdxl_vit-h.safetensors"
IMAGE_ENCODER_SUBFOLDER = "models/image_encoder"
IP_ADAPTER = WeightsRepo(
    repo_id="h94/IP-Adapter",
    folder="IP-Adapter",
    allow_patterns=(
        f"{IP_ADAPTER_SUBFOLDER}/{IP_ADAPTER_WEIGHT}",
        f"{IMAGE_ENCODER_SUBFOLDER}/config.json",
        f"{IMAGE_ENCODER_SUBFOLDER}/model.safetensors",
    ),
    marker=f"{IP_ADAPTER_SUBFOLDER}/{IP_ADAPTER_WEIGHT}",
)
ALL_REPOS: tuple[WeightsRepo, ...] = (SDXL_BASE, SDXL_VAE_FP16_FIX, IP_ADAPTER)
# Turbo mode only (GEN4_TURBO=1): SDXL-Lightning's 4-step LoRA (kohya format, rank 64), distilled
# from SDXL base by progressive adversarial distillation; Euler with trailing timesteps, no CFG.
LIGHTNING_LORA_WEIGHT = "sdxl_lightning_4step_lora.safetensors"
LIGHTNING_STEPS = 4
SDXL_LIGHTNING = WeightsRepo(
    repo_id="ByteDance/SDXL-Lightning",
    folder="SDXL-Lightning",
    allow_patterns=(LIGHTNING_LORA_WEIGHT,),
    marker=LIGHTNING_LORA_WEIGHT,
)


def required_repos(turbo: bool = False) -> tuple[WeightsRepo, ...]:
    """The repositories a server needs: the three always, SDXL-Lightning for turbo."""
    return (*ALL_REPOS, SDXL_LIGHTNING) if turbo else ALL_REPOS


# Written by scripts/make_random_weights.py so that logs can say plainly which weights run: tiny
# stand-ins for tests, or the published full-size architectures with random values (GPU timing).
TINY_MARKER = "TINY_RANDOM_WEIGHTS"
FULL_RANDOM_MARKER = "FULL_SIZE_RANDOM_WEIGHTS"


def weight_files(weights_dir: Path, turbo: bool = False) -> list[Path]:
    """The tensor files a server loads from the weights folder (those present), largest first."""
    files = [
        weights_dir / repo.folder / pattern
        for repo in required_repos(turbo)
        for pattern in repo.allow_patterns
        if pattern.endswith(".safetensors") and (weights_dir / repo.folder / pattern).is_file()
    ]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def missing_repos(weights_dir: Path, turbo: bool = False) -> list[WeightsRepo]:
    """The required repositories whose marker file is absent from the weights folder."""
    return [r for r in required_repos(turbo) if not (weights_dir / r.folder / r.marker).is_file()]


def weights_label(weights_dir: Path) -> str:
    """What the folder holds, in words for logs and benchmark tables."""
    if (weights_dir / TINY_MARKER).is_file():
        return "tiny random"
    if (weights_dir / FULL_RANDOM_MARKER).is_file():
        return "full-size random"
    return "real"
