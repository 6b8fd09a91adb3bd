"""Weights already in the local Hugging Face cache are taken from there, not downloaded again.

The cache is built here in huggingface_hub's own layout (blobs by hash, a snapshot of symlinks to
them, refs/main) from the tiny weights; huggingface_hub's real `snapshot_download` looks it up
with `local_files_only`, and any call that would reach the hub fails the test."""

from __future__ import annotations

import filecmp
import hashlib
import os
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.hf_api import ModelInfo

from model.engine import weights as weights_table
from model.engine.weights import (
    IP_ADAPTER,
    SDXL_BASE,
    SDXL_LIGHTNING,
    SDXL_VAE_FP16_FIX,
    WeightsRepo,
    missing_repos,
    required_repos,
)
from model.serving.download import WeightsIntegrityError, download_missing, from_hf_cache

REVISION = "0123456789abcdef0123456789abcdef01234567"


def commit(repo: WeightsRepo) -> str:
    """The commit the cache holds the repository at: its pinned one, else the head's."""
    return repo.revision or REVISION


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
            entry = storage / "snapshots" / commit(repo) / file.relative_to(weights / repo.folder)
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
    repos = required_repos(turbo=True, safety_checker=True)
    hf_cache_from(tiny_weights, repos, cache)
    said: list[str] = []
    download_missing(volume, say=said.append, turbo=True, cache_dir=cache, safety_checker=True)
    assert no_hub == [] and missing_repos(volume, turbo=True, safety_checker=True) == []
    assert said == [f"{r.repo_id}: linked into {volume / r.folder} from the local Hugging Face cache" for r in repos]
    for repo in repos:
        snapshot = cache / f"models--{repo.repo_id.replace('/', '--')}" / "snapshots" / commit(repo)
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
    snapshot = cache / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / commit(SDXL_BASE)
    (snapshot / SDXL_BASE.marker).unlink()
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


class FakeHub:
    """The hub's side of a download, answered from the tiny weights as if they were the pinned
    commits: `snapshot_download` copies a repository's matching files, `HfApi.model_info` lists
    each file's sha256 (large files, as LFS records them) or git blob id (small ones). Records what
    was fetched at which revision; `corrupt` names files whose copy gets one byte flipped."""

    def __init__(self, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.weights = weights
        self.fetched: list[tuple[str, str | None]] = []
        self.corrupt: set[str] = set()
        real = huggingface_hub.snapshot_download
        folders = {r.repo_id: r.folder for r in required_repos(turbo=True, safety_checker=True)}

        def snapshot_download(repo_id: str, **kwargs: object) -> str:
            if kwargs.get("local_files_only"):
                return real(repo_id=repo_id, **kwargs)
            self.fetched.append((repo_id, kwargs.get("revision")))  # type: ignore[arg-type]
            source, target = weights / folders[repo_id], Path(kwargs["local_dir"])  # type: ignore[arg-type]
            for pattern in kwargs["allow_patterns"]:  # type: ignore[attr-defined]
                for file in source.glob(pattern):
                    dest = target / file.relative_to(source)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    data = bytearray(file.read_bytes())
                    if f"{folders[repo_id]}/{file.relative_to(source)}" in self.corrupt:
                        data[len(data) // 2] ^= 1
                    dest.write_bytes(data)
            return str(target)

        def model_info(api: object, repo_id: str, **kwargs: object) -> ModelInfo:
            source = weights / folders[repo_id]
            siblings = []
            for file in sorted(p for p in source.rglob("*") if p.is_file()):
                data = file.read_bytes()
                sibling = {"rfilename": file.relative_to(source).as_posix(), "size": len(data)}
                if file.suffix in (".safetensors", ".bin"):
                    sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                else:
                    sibling["blobId"] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                siblings.append(sibling)
            return ModelInfo(id=repo_id, sha=kwargs.get("revision") or REVISION, siblings=siblings)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)


def pins_of(weights: Path, repo: WeightsRepo) -> WeightsRepo:
    """The repository with each pinned hash replaced by that of the tiny stand-in's file."""
    digest = lambda name: hashlib.sha256((weights / repo.folder / name).read_bytes()).hexdigest()  # noqa: E731
    return replace(repo, sha256=tuple((name, digest(name)) for name, _ in repo.sha256))


def test_a_download_takes_the_pinned_commits_and_verifies_every_file(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = FakeHub(tiny_weights, monkeypatch)
    # The table pins the real image encoder's sha256; the tiny stand-in's file has its own.
    monkeypatch.setattr(weights_table, "ALL_REPOS", tuple(pins_of(tiny_weights, r) for r in weights_table.ALL_REPOS))
    volume, said = tmp_path / "weights", []
    download_missing(volume, say=said.append, turbo=True, safety_checker=True, cache_dir=tmp_path / "empty-cache")
    repos = required_repos(turbo=True, safety_checker=True)
    assert hub.fetched == [(r.repo_id, r.revision) for r in repos]
    assert missing_repos(volume, turbo=True, safety_checker=True) == []
    for repo in repos:
        source = tiny_weights / repo.folder
        files = {p for pattern in repo.allow_patterns for p in source.glob(pattern) if p.is_file()}
        done = [line for line in said if line.startswith(f"{repo.repo_id}: ") and line.endswith("files verified")]
        assert done and done[0].endswith(f", {len(files)} files verified"), said
        for file in files:
            assert (volume / repo.folder / file.relative_to(source)).read_bytes() == file.read_bytes()
    assert f"{SDXL_LIGHTNING.repo_id}: downloading 1 file pattern(s) at main (no pinned revision" in "\n".join(said)


def test_a_corrupted_file_is_deleted_with_the_marker_and_named(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = FakeHub(tiny_weights, monkeypatch)
    hub.corrupt = {f"{SDXL_VAE_FP16_FIX.folder}/config.json"}
    volume = tmp_path / "weights"
    message = r"sdxl-vae-fp16-fix at 207b116\w+: 1 file\(s\) differ .* config.json: git-blob [0-9a-f]{40}, expected "
    with pytest.raises(WeightsIntegrityError, match=message):
        download_missing(volume, say=lambda _: None, cache_dir=tmp_path / "empty-cache")
    target = volume / SDXL_VAE_FP16_FIX.folder
    assert not (target / "config.json").exists() and not (target / SDXL_VAE_FP16_FIX.marker).exists()
    assert SDXL_VAE_FP16_FIX in missing_repos(volume)  # the next start fetches it again


def test_the_tables_pinned_hash_is_enforced(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's record and the table's pin must agree: the tiny image encoder is not the real one."""
    FakeHub(tiny_weights, monkeypatch)
    ((name, pinned),) = IP_ADAPTER.sha256
    message = f"{name}: the hub says sha256 [0-9a-f]{{64}}, the table pins {pinned}"
    with pytest.raises(WeightsIntegrityError, match=message):
        download_missing(tmp_path / "weights", say=lambda _: None, cache_dir=tmp_path / "empty-cache")
    assert IP_ADAPTER in missing_repos(tmp_path / "weights")


def test_a_cache_at_another_commit_is_not_taken(tiny_weights: Path, tmp_path: Path, no_hub: list[str]) -> None:
    """The pin holds for the cache too: SDXL base cached at some other commit is downloaded."""
    hf_cache_from(tiny_weights, (replace(SDXL_BASE, revision=None),), tmp_path / "hub")
    assert from_hf_cache(SDXL_BASE, tmp_path / "weights" / SDXL_BASE.folder, tmp_path / "hub") is None
    assert not (tmp_path / "weights").exists()
