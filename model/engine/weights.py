"""Where each weight lives: one table serves the downloader, the tiny builder, the loader and
cog.replicate.yaml's managed weights (scripts/cog_weights.py writes it from here).

Every entry is a Hugging Face repository at a pinned commit, mirrored under the weights folder in
its own layout. The revisions are the commits that public projects pin (sources beside each);
they could not be checked against the hub from the machine this was written on, which cannot
reach it. The downloader checks every file it fetches against the hub's own hashes for that
commit, and against `sha256` here where a hash is pinned. Pure: no torch.
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
    # The commit the files are taken at; None: the branch head (no verified commit known).
    revision: str | None
    # Pinned sha256 of some files (path in the repository -> hex digest), checked on download.
    sha256: tuple[tuple[str, str], ...] = ()


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
    # Pinned by many public projects (their URLs .../resolve/462165.../sd_xl_base_1.0.safetensors).
    revision="462165984030d82259a11f4367a4eed129e94a7b",
)
# SDXL's own VAE overflows in fp16 and diffusers then upcasts it to fp32; this one does not.
SDXL_VAE_FP16_FIX = WeightsRepo(
    repo_id="madebyollin/sdxl-vae-fp16-fix",
    folder="sdxl-vae-fp16-fix",
    allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
    marker="diffusion_pytorch_model.safetensors",
    revision="207b116dae70ace3637169f1ddd2434b91b3a8cd",  # as pinned in Baseten's truss examples
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
    # The commit and the image encoder's hash as a public installer pins them (unverified here).
    revision="018e402774aeeddd60609b4ecdb7e298259dc729",
    sha256=(
        (
            f"{IMAGE_ENCODER_SUBFOLDER}/model.safetensors",
            "6ca9667da1ca9e0b0f75e46bb030f7e011f44f86cbfb8d5a36590fcd7507b030",
        ),
    ),
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
    revision=None,  # no public pin of a commit found: the downloader says so when it fetches it
)
# GEN4_SAFETY_CHECKER=1 only: Stable Diffusion's CLIP-based NSFW classifier (diffusers'
# StableDiffusionSafetyChecker). This commit holds the weights as pytorch_model.bin only.
SAFETY_CHECKER_WEIGHT = "pytorch_model.bin"
SAFETY_CHECKER = WeightsRepo(
    repo_id="CompVis/stable-diffusion-safety-checker",
    folder="stable-diffusion-safety-checker",
    allow_patterns=("config.json", "preprocessor_config.json", SAFETY_CHECKER_WEIGHT),
    marker=SAFETY_CHECKER_WEIGHT,
    revision="cb41f3a270d63d454d385fc2e4f571c487c253c5",  # as pinned by sdkit (Easy Diffusion)
)


def required_repos(turbo: bool = False, safety_checker: bool = False) -> tuple[WeightsRepo, ...]:
    """The repositories a server needs: the three always, SDXL-Lightning for turbo, the safety
    checker when it is on."""
    return (*ALL_REPOS, *((SDXL_LIGHTNING,) if turbo else ()), *((SAFETY_CHECKER,) if safety_checker else ()))


# Written by scripts/make_random_weights.py so that logs can say plainly which weights run: tiny
# stand-ins for tests, or the published full-size architectures with random values (GPU timing).
TINY_MARKER = "TINY_RANDOM_WEIGHTS"
FULL_RANDOM_MARKER = "FULL_SIZE_RANDOM_WEIGHTS"


def weight_files(weights_dir: Path, turbo: bool = False, safety_checker: bool = False) -> list[Path]:
    """The tensor files a server loads from the weights folder (those present), largest first."""
    files = [
        weights_dir / repo.folder / pattern
        for repo in required_repos(turbo, safety_checker)
        for pattern in repo.allow_patterns
        if pattern.endswith((".safetensors", ".bin")) and (weights_dir / repo.folder / pattern).is_file()
    ]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def missing_repos(weights_dir: Path, turbo: bool = False, safety_checker: bool = False) -> list[WeightsRepo]:
    """The required repositories whose marker file is absent from the weights folder."""
    return [r for r in required_repos(turbo, safety_checker) if not (weights_dir / r.folder / r.marker).is_file()]


def weights_label(weights_dir: Path) -> str:
    """What the folder holds, in words for logs and benchmark tables."""
    if (weights_dir / TINY_MARKER).is_file():
        return "tiny random"
    if (weights_dir / FULL_RANDOM_MARKER).is_file():
        return "full-size random"
    return "real"
