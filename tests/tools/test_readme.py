"""The README's main job (its first command) and its Python example run as written, on tiny
weights, with local reference files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import OFFLINE_ENV, ROOT, png_bytes


def readme_python_example() -> str:
    """The python block of the README's "From Python, without a server" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### From Python, without a server", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "the section has no python example"
    return match.group(1)


def run_example(folder: Path, weights: Path, woman: bytes) -> subprocess.CompletedProcess[str]:
    """The example as a script in `folder`, beside its two reference files, on `weights`."""
    (folder / "woman.jpg").write_bytes(woman)
    (folder / "park.jpg").write_bytes(png_bytes((400, 300), "green", fmt="JPEG"))
    (folder / "example.py").write_text(readme_python_example())
    env = os.environ | OFFLINE_ENV | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env |= {"WEIGHTS_DIR": str(weights), "GEN4_STEPS": "2", "GEN4_DOWNLOAD_WEIGHTS": "false"}
    command = [sys.executable, "example.py"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_the_readme_python_example_writes_the_image(tiny_weights: Path, tmp_path: Path) -> None:
    done = run_example(tmp_path, tiny_weights, png_bytes((300, 400), "pink", fmt="JPEG"))
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(tmp_path / "out.png") as image:
        assert image.format == "PNG" and image.size == (1440, 1080)
    assert "Using seed: 7" in done.stdout and "Reference encodings: 0 cached, 2 encoded" in done.stdout
    assert "'base denoise':" in done.stdout  # the timings it prints


def test_the_readme_python_example_names_a_bad_field(tiny_weights: Path, tmp_path: Path) -> None:
    """Its error branch: a reference that is not an image ends the script with the message."""
    done = run_example(tmp_path, tiny_weights, b"not an image")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("reference_images[0]"), done.stderr[-2000:]
    assert not (tmp_path / "out.png").exists()


def test_the_readme_main_job_writes_the_sample_and_says_which_weights(tiny_weights: Path, tmp_path: Path) -> None:
    """The first command's `scripts/run_sample.py`, without real weights: it says it uses the tiny
    ones, starts the real server, and writes Replicate's example at its exact size; and it prints
    what it did, no library's warning."""
    first = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    assert "bash scripts/setup.sh && .venv/bin/python scripts/run_sample.py\n" in first, first
    out = tmp_path / "outputs" / "sample.png"
    env = os.environ | OFFLINE_ENV | {"GEN4_DOWNLOAD_WEIGHTS": "false"}
    command = [sys.executable, str(ROOT / "scripts" / "run_sample.py"), "--out", str(out)]
    command += ["--weights-dir", str(tmp_path / "weights"), "--tiny-weights-dir", str(tiny_weights)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1440, 1080)
    assert "is incomplete (run scripts/download_weights.py for the real weights): using TINY RANDOM" in said
    assert "Loaded SDXL + IP-Adapter Plus with TINY RANDOM weights" in said
    assert "Using reference tags: park, woman, man" in said and f"wrote {out} (1440x1080 PNG)" in said
    assert not re.search(r"warn", said, flags=re.I), said
    assert (out.parent / "server.log").stat().st_size > 0
