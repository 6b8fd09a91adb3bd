"""Server-side settings, read once from environment variables.

The request interface is exactly Replicate's; everything else a deployment may tune comes from
here, each with a documented default (see README, "Settings").
Pure: no torch.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from model.contract.tables import DEFAULT_ASPECT_RATIO, DEFAULT_RESOLUTION, MAX_REFERENCE_BYTES, parse_entries
from model.engine.options import DTYPE_NAMES, VaeTiling
from model.engine.weights import LIGHTNING_STEPS

OUTPUT_FORMATS = ("png", "jpg", "webp")
VAE_TILING_MODES = tuple(VaeTiling)
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """Deployment settings. Field name `x` is read from the environment variable `GEN4_X`,
    except `weights_dir`, which is `WEIGHTS_DIR` as the Cog convention goes."""

    weights_dir: Path = Path("weights")
    steps: int = 30  # SDXL base reaches its quality plateau near 30 Euler steps
    guidance: float = 5.0  # SDXL's recommended CFG range is 5 to 7; IP-Adapter favours the low end
    ip_adapter_scale: float = 0.6  # h94 recommends 0.5 to 0.7 for Plus when text must still steer
    output_format: str = "png"  # Replicate's output is PNG
    device: str = "auto"  # auto: cuda when available, else cpu
    # auto: float16 on CUDA, float32 on a CPU; or float16, bfloat16, float32.
    dtype: str = "auto"
    reference_cache_size: int = 64  # encoded references kept (LRU); about 0.7 MB each in fp16
    # Decoded reference images kept (LRU, MB), by their file's bytes: a reference file sent again
    # is not decoded again (a 12 MP photo, about 2.3 MB decoded as the encoder reads it). 0: off.
    decoded_cache_mb: int = 256
    # img2img strength of the refine pass that brings the ~1 MP base to a larger output: hires-fix
    # practice (and SDXL's refiner recipes) sit at 0.3 to 0.4; higher adds detail but drifts.
    refine_strength: float = 0.35
    # VAE decode in tiles: "auto" decodes whole and falls back to tiles only on out-of-memory.
    vae_tiling: str = "auto"
    # Write each tag's mask as an image beside the output (<name>.masks.png).
    save_masks: bool = False
    # Or into this folder, where they stay (the outputs' folder is the server's, and temporary).
    # Setting it turns save_masks on.
    masks_dir: Path | None = None
    # Log each prediction's tag masks as one small PNG data URI line (model/serving/mask_log.py),
    # for a client that does not share the server's disk (scripts/playground.py).
    masks_in_logs: bool = False
    # At setup, download missing weights into weights_dir (a volume in Docker) before loading.
    download_weights: bool = True
    # Turbo: SDXL-Lightning's 4-step LoRA fused into the UNet, 4 steps, no classifier-free
    # guidance (GEN4_STEPS and GEN4_GUIDANCE then do not apply). Faster, at a quality cost.
    turbo: bool = False
    # Stable Diffusion's safety checker (CompVis) on every output, after decoding and before it is
    # written: a flagged image fails the prediction (model/serving/safety.py). Its weights are
    # fetched with the others when it is on.
    safety_checker: bool = False
    # Fuse each self-attention's Q, K, V projections into one matmul (cross-attention stays as is).
    fuse_qkv: bool = True
    # torch.compile the UNet's and the VAE's ResNet and feed-forward blocks, and generate every
    # output size once at setup so that no request pays for compilation (a longer cold boot).
    compile: bool = False
    # On CUDA, replay each denoising step's UNet call as a CUDA graph (model/engine/graphs.py), captured
    # on a shape's first use: the step loop is bound by the host otherwise. Off with compile.
    cuda_graphs: bool = True
    # Once setup ends, while no prediction is in flight, generate these ratio-table entries with
    # each layout of 0 to 3 references, mentioned or global or both (model/serving/warmup.py), so that a
    # later request of that shape finds its CUDA graphs captured; a prediction that arrives stops
    # it at the next step. "auto": Replicate's default entry, on CUDA with CUDA graphs; "none"; or
    # e.g. "1080p 16:9,1080p 4:3".
    warmup: str = "auto"
    # While the server's worker imports torch and diffusers, read the weight files in a thread so
    # that a cold start's load finds them in the page cache (model/serving/prefetch.py).
    prefetch: bool = True
    # Where the queue publishes how many predictions are in flight (read by scripts/drain.py).
    queue_state_file: Path = Path(tempfile.gettempdir()) / "gen4-queue.json"
    # Reference downloads (model/serving/fetch.py): at most this many bytes each, counted after
    # any Content-Encoding is undone (default: a 40 MP image, the largest accepted, uncompressed).
    reference_max_bytes: int = MAX_REFERENCE_BYTES
    # Seconds one reference's download may take in all: name resolution, redirects, the body.
    reference_timeout: float = 30.0
    # Fetch references from loopback, private and link-local addresses too (local use only: it
    # lets a request reach the server's own network).
    reference_allow_private: bool = False

    @property
    def writes_masks(self) -> bool:
        """Whether each prediction writes its tag masks (GEN4_SAVE_MASKS or GEN4_MASKS_DIR)."""
        return self.save_masks or self.masks_dir is not None

    def warmup_entries(self, graphs: bool) -> list[tuple[str, str]]:
        """The entries the idle warm-up generates; `graphs`: whether the server captures CUDA graphs."""
        if self.warmup == "none":
            return []
        if self.warmup == "auto":
            return [(DEFAULT_RESOLUTION, DEFAULT_ASPECT_RATIO)] if graphs else []
        return parse_entries(self.warmup)

    @property
    def effective_steps(self) -> int:
        """Denoising steps of the base pass: SDXL-Lightning's 4 in turbo, else `steps`."""
        return LIGHTNING_STEPS if self.turbo else self.steps

    @property
    def effective_guidance(self) -> float:
        """CFG scale: off in turbo (SDXL-Lightning is distilled without it), else `guidance`."""
        return 0.0 if self.turbo else self.guidance

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"GEN4_STEPS must be at least 1, got {self.steps}")
        if self.guidance < 0:
            raise ValueError(f"GEN4_GUIDANCE must be >= 0, got {self.guidance}")
        if self.ip_adapter_scale < 0:
            raise ValueError(f"GEN4_IP_ADAPTER_SCALE must be >= 0, got {self.ip_adapter_scale}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(
                f"GEN4_OUTPUT_FORMAT must be one of {', '.join(OUTPUT_FORMATS)}, got {self.output_format!r}"
            )
        if not 0.0 < self.refine_strength <= 1.0:
            raise ValueError(f"GEN4_REFINE_STRENGTH must be in (0, 1], got {self.refine_strength}")
        if self.vae_tiling not in VAE_TILING_MODES:
            raise ValueError(f"GEN4_VAE_TILING must be one of {', '.join(VAE_TILING_MODES)}, got {self.vae_tiling!r}")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"GEN4_DTYPE must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}")
        if self.reference_cache_size < 1:
            raise ValueError(f"GEN4_REFERENCE_CACHE_SIZE must be at least 1, got {self.reference_cache_size}")
        if self.warmup not in ("auto", "none"):
            try:
                parse_entries(self.warmup)
            except ValueError as exc:
                raise ValueError(f"GEN4_WARMUP={self.warmup!r} is not auto, none or a list of entries: {exc}") from None
        if self.reference_max_bytes < 1:
            raise ValueError(f"GEN4_REFERENCE_MAX_BYTES must be at least 1, got {self.reference_max_bytes}")
        if not self.reference_timeout > 0:
            raise ValueError(f"GEN4_REFERENCE_TIMEOUT must be > 0 seconds, got {self.reference_timeout}")
        if self.decoded_cache_mb < 0:
            raise ValueError(f"GEN4_DECODED_CACHE_MB must be at least 0 (0: off), got {self.decoded_cache_mb}")


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}")


def env_name(field_name: str) -> str:
    """The environment variable that sets a Settings field."""
    return "WEIGHTS_DIR" if field_name == "weights_dir" else f"GEN4_{field_name.upper()}"


def settings_from_env(environ: dict[str, str] | None = None) -> Settings:
    """Settings with every field that has an environment variable set taken from it."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, object] = {}
    for field in fields(Settings):
        raw = environ.get(env_name(field.name))
        if raw is None or raw == "":
            continue
        convert = {"int": int, "float": float, "Path": Path, "Path | None": Path, "bool": _parse_bool}.get(
            str(field.type), str
        )
        try:
            values[field.name] = convert(raw.strip().lower() if convert is str else raw)
        except ValueError as exc:
            raise ValueError(f"{env_name(field.name)}={raw!r} is not a valid {field.type}") from exc
    return Settings(**values)  # type: ignore[arg-type]
