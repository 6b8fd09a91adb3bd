"""What `cog build` would send into the image, under Docker's .dockerignore rules.

Cog builds with BuildKit: the project folder is the build context, its generated Dockerfile runs
`COPY . /src`, the Dockerfile frontend drops what .dockerignore matches, and Cog itself always
drops `.cog/` (pkg/image/build.go, defaultExcludePatterns). No Docker engine here: the `docker`
package's `exclude_paths` implements the same rules (moby's pattern matcher: `**`, `!` exceptions,
directory prefixes). The tree is the repository's tracked files plus what a user's checkout holds
after following the README (9 GB of weights, a venv, outputs, caches), as sparse files that cost
no disk.
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parents[2]
COG_EXCLUDES = [".cog"]  # Cog's own, whatever .dockerignore says
MAX_BYTES = 4 << 20  # nothing the image needs from the project is over a few MB
# Paths (relative to the project) that must never reach the image.
FORBIDDEN = ("weights", ".tiny-weights", ".venv", "venv", "outputs", ".git", ".whl", "docs", "tests", ".cog")
# A user's checkout after `download_weights.py --weights-dir weights`, a local venv and some runs:
# path -> size in bytes.
CHECKOUT: dict[str, int] = {
    "weights/stable-diffusion-xl-base-1.0/unet/diffusion_pytorch_model.fp16.safetensors": 5_135_149_760,
    "weights/stable-diffusion-xl-base-1.0/unet/config.json": 1_680,
    "weights/stable-diffusion-xl-base-1.0/text_encoder_2/model.fp16.safetensors": 1_389_382_176,
    "weights/sdxl-vae-fp16-fix/diffusion_pytorch_model.safetensors": 334_643_268,
    "weights/sdxl-vae-fp16-fix/config.json": 631,
    "weights/IP-Adapter/models/image_encoder/model.safetensors": 2_528_373_448,
    "weights/stable-diffusion-safety-checker/pytorch_model.bin": 1_216_064_769,
    ".tiny-weights/stable-diffusion-xl-base-1.0/unet/config.json": 1_000,
    ".venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so": 450_000_000,
    "venv/bin/python": 20_000,
    "outputs/output-1.png": 3_000_000,
    "model/__pycache__/x.cpython-311.pyc": 10_000,
    ".pytest_cache/v/cache/lastfailed": 100,
    ".git/objects/pack/pack-1.pack": 80_000_000,
    "model.safetensors": 100_000_000,  # a stray checkpoint at the top
    "server.log": 100_000,
}


def dockerignore_patterns(text: str) -> list[str]:
    """The patterns of a .dockerignore file: one a line, comments and blank lines dropped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def context_files(root: Path, patterns: list[str]) -> dict[str, int]:
    """Every file the build context would hold (path relative to `root` -> size)."""
    kept = exclude_paths(str(root), [*patterns, *COG_EXCLUDES])
    return {p: (root / p).stat().st_size for p in kept if (root / p).is_file()}


def problems(files: dict[str, int]) -> list[str]:
    """What should not be in the context: forbidden paths and files over MAX_BYTES."""
    found = [f"{p} (under {p.split('/')[0]}/)" for p in files if p.split("/")[0] in FORBIDDEN]
    found += [f"{p} ({size / 1e6:.0f} MB)" for p, size in files.items() if size > MAX_BYTES]
    return sorted(found)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files of this repository, plus the user's weights, venv and outputs."""
    root = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    archive = root.parent / "tracked.tar"
    with tarfile.open(archive, "w") as tar:
        for name in tracked.decode().split("\0"):
            if name and (ROOT / name).is_file():
                tar.add(ROOT / name, arcname=name)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    for name, size in CHECKOUT.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: no disk used
    return root


def test_the_context_holds_the_code_and_none_of_the_weights_venvs_outputs_or_lab(checkout: Path) -> None:
    patterns = dockerignore_patterns((ROOT / ".dockerignore").read_text())
    files = context_files(checkout, patterns)
    assert problems(files) == []
    # What the image runs is there: an ignore file that drops too much fails here.
    needed = {"predict.py", "cog.yaml", "requirements.txt", "scripts/download_weights.py"}
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "model").rglob("*.py")}
    assert needed <= set(files), sorted(needed - set(files))
    assert sum(files.values()) < 8 << 20, f"{sum(files.values()) / 1e6:.1f} MB of context"


def test_without_the_weights_rule_the_weights_get_in(checkout: Path) -> None:
    """The check catches a .dockerignore that forgets weights/ (what there was before)."""
    patterns = [p for p in dockerignore_patterns((ROOT / ".dockerignore").read_text()) if p != "weights"]
    found = problems(context_files(checkout, patterns))
    assert "weights/sdxl-vae-fp16-fix/config.json (under weights/)" in found
    assert not any(p.startswith("weights/") and "MB" in p for p in found)  # **/*.safetensors still holds
    patterns = [p for p in patterns if not p.startswith("**/*.")]
    found = problems(context_files(checkout, patterns))
    assert "weights/stable-diffusion-xl-base-1.0/unet/diffusion_pytorch_model.fp16.safetensors (5135 MB)" in found
    assert "model.safetensors (100 MB)" in found


def test_no_ignore_file_sends_everything(checkout: Path) -> None:
    found = problems(context_files(checkout, []))
    for name in (".venv/", ".git/", "outputs/", "docs/", "tests/", ".tiny-weights/"):
        assert any(f"(under {name})" in p for p in found), name
