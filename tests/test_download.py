"""Weights already in the local Hugging Face cache are taken from there, not downloaded again.

The cache is built here in huggingface_hub's own layout (blobs by hash, a snapshot of symlinks to
them, refs/main) from the tiny weights; huggingface_hub's real `snapshot_download` looks it up
with `local_files_only`, and any call that would reach the hub fails the test."""

from __future__ import annotations

import filecmp
import hashlib
import os
from pathlib import Path

import huggingface_hub
import pytest

from model.engine.weights import SDXL_BASE, WeightsRepo, missing_repos, required_repos
from model.serving.download import download_missing, from_hf_cache

REVISION = "0123456789abcdef0123456789abcdef01234567"


def hf_cache_from(weights: Path, repos: tuple[WeightsRepo, ...], cache: Path) -> None:
    """Lay each repository's folder of `weights` out as huggingface_hub's cache holds it."""
    for repo in repos:
        storage = cache / f"models--{repo.repo_id.replace('/', '--')}"
        (storage / "refs").mkdir(parents=True)
        (storage / "refs" / "main").write_text(REVISION)
        for file in sorted((weights / repo.folder).rglob("*")):
            if not file.is_file():
                continue
            data = file.read_bytes()
            blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            entry = storage / "snapshots" / REVISION / file.relative_to(weights / repo.folder)
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.symlink_to(os.path.relpath(blob, entry.parent))


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The real cache lookup; a download (anything without `local_files_only`) is recorded and refused."""
    real = huggingface_hub.snapshot_download
    downloads: list[str] = []

    def snapshot_download(repo_id: str, **kwargs: object) -> str:
        if kwargs.get("local_files_only"):
            return real(repo_id=repo_id, **kwargs)
        downloads.append(repo_id)
        raise ConnectionError(f"the test tried to download {repo_id}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return downloads


def test_a_cached_repository_is_hard_linked_in_its_layout(
    tiny_weights: Path, tmp_path: Path, no_hub: list[str]
) -> None:
    cache, volume = tmp_path / "hub", tmp_path / "weights"
    repos = required_repos(turbo=True)
    hf_cache_from(tiny_weights, repos, cache)
    said: list[str] = []
    download_missing(volume, say=said.append, turbo=True, cache_dir=cache)
    assert no_hub == [] and missing_repos(volume, turbo=True) == []
    assert said == [f"{r.repo_id}: linked into {volume / r.folder} from the local Hugging Face cache" for r in repos]
    for repo in repos:
        snapshot = cache / f"models--{repo.repo_id.replace('/', '--')}" / "snapshots" / REVISION
        linked = sorted(p.relative_to(volume / repo.folder) for p in (volume / repo.folder).rglob("*") if p.is_file())
        # Exactly the files the download would fetch: SDXL base's own VAE (replaced by the fp16-fix
        # one) is in the tiny cache but not taken.
        expected = sorted({p.relative_to(snapshot) for pattern in repo.allow_patterns for p in snapshot.glob(pattern)})
        assert linked == expected
        for rel in linked:
            assert os.path.samefile(volume / repo.folder / rel, snapshot / rel), rel  # a link, no copy
            assert not (volume / repo.folder / rel).is_symlink()
    assert not (volume / SDXL_BASE.folder / "vae").exists()


def test_a_partly_cached_repository_is_downloaded_and_nothing_is_linked(
    tiny_weights: Path, tmp_path: Path, no_hub: list[str]
) -> None:
    cache, volume = tmp_path / "hub", tmp_path / "weights"
    hf_cache_from(tiny_weights, (SDXL_BASE,), cache)
    # A diffusers user who loaded SDXL in fp32 has every file but the fp16 UNet.
    (cache / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / REVISION / SDXL_BASE.marker).unlink()
    assert from_hf_cache(SDXL_BASE, volume / SDXL_BASE.folder, cache) is None
    assert not volume.exists()
    with pytest.raises(ConnectionError, match="tried to download"):
        download_missing(volume, say=lambda _: None, cache_dir=cache)
    assert no_hub == [SDXL_BASE.repo_id]


def test_across_filesystems_the_cached_files_are_copied(
    tiny_weights: Path, tmp_path: Path, no_hub: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, target = tmp_path / "hub", tmp_path / "weights" / SDXL_BASE.folder
    hf_cache_from(tiny_weights, (SDXL_BASE,), cache)

    def cross_device(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    assert from_hf_cache(SDXL_BASE, target, cache) == "copied"
    marker = target / SDXL_BASE.marker
    assert filecmp.cmp(marker, tiny_weights / SDXL_BASE.folder / SDXL_BASE.marker, shallow=False)
    assert not marker.is_symlink() and marker.stat().st_nlink == 1
