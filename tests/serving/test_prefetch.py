"""The weights prefetch that predict.py starts before its heavy imports (model/serving/prefetch.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.engine.weights import IP_ADAPTER, SDXL_BASE, SDXL_LIGHTNING, required_repos, weight_files
from model.serving.prefetch import THREAD_NAME, prefetch_weights, read_files


def fake_weights(root: Path, turbo: bool = False) -> dict[Path, int]:
    """Every tensor file of the layout, each of a different size; config files too."""
    sizes = {}
    for k, repo in enumerate(required_repos(turbo)):
        for j, pattern in enumerate(repo.allow_patterns):
            if "*" in pattern:
                continue
            path = root / repo.folder / pattern
            path.parent.mkdir(parents=True, exist_ok=True)
            size = 1000 * (k + 1) + 7 * j
            path.write_bytes(b"\0" * size)
            if pattern.endswith(".safetensors"):
                sizes[path] = size
    return sizes


def test_weight_files_are_the_tensor_files_largest_first(tmp_path: Path) -> None:
    sizes = fake_weights(tmp_path, turbo=True)
    files = weight_files(tmp_path, turbo=True)
    assert set(files) == set(sizes)
    assert [sizes[f] for f in files] == sorted(sizes.values(), reverse=True)
    assert tmp_path / SDXL_BASE.folder / SDXL_BASE.marker in files
    # Without turbo, no SDXL-Lightning; files not present are left out.
    assert all(SDXL_LIGHTNING.folder not in str(f) for f in weight_files(tmp_path))
    (tmp_path / IP_ADAPTER.folder / IP_ADAPTER.marker).unlink()
    assert tmp_path / IP_ADAPTER.folder / IP_ADAPTER.marker not in weight_files(tmp_path)


def test_read_files_reads_every_byte_and_skips_what_it_cannot_read(tmp_path: Path) -> None:
    sizes = fake_weights(tmp_path)
    files = weight_files(tmp_path)
    assert read_files(files) == sum(sizes[f] for f in files)
    assert read_files([*files, tmp_path / "gone.safetensors"]) == sum(sizes[f] for f in files)


def test_prefetch_reads_the_configured_folder_in_a_daemon_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_weights(tmp_path)
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("GEN4_PREFETCH", raising=False)
    thread = prefetch_weights()
    assert thread is not None and thread.daemon and thread.name == THREAD_NAME
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    "env",
    [
        {"GEN4_PREFETCH": "0"},  # switched off
        {"GEN4_STEPS": "many"},  # invalid settings: setup reports them, the prefetch stays out
        {"WEIGHTS_DIR": "/nonexistent-weights"},  # nothing to read
    ],
)
def test_no_prefetch_when_off_invalid_or_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict) -> None:
    fake_weights(tmp_path)
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert prefetch_weights() is None
