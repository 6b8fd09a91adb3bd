"""Setup (model/serving/setup.py): missing weights downloaded into the folder, then loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from model.engine import weights as weights_table
from model.engine.pipeline import (
    MissingWeightsError,
)
from model.engine.weights import (
    ALL_REPOS,
    SDXL_VAE_FP16_FIX,
)
from model.serving.settings import Settings
from model.serving.setup import build_service
from tests.serving.test_download import FakeHub, pins_of


def test_setup_downloads_missing_weights_into_the_folder_then_loads(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The hub is replaced by a local copy of the tiny weights (no network in tests); the rest is the
    real setup path: what is missing is fetched into WEIGHTS_DIR, in its layout, then loaded."""
    hub = FakeHub(tiny_weights, monkeypatch)
    # The table pins the real image encoder's sha256; the tiny stand-in's file has its own.
    monkeypatch.setattr(weights_table, "ALL_REPOS", tuple(pins_of(tiny_weights, r) for r in weights_table.ALL_REPOS))
    hub_download = huggingface_hub.snapshot_download

    def snapshot_download(repo_id: str, **kwargs: object) -> str:
        if kwargs.get("local_files_only"):  # this machine's Hugging Face cache, whatever it holds
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        return hub_download(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    volume = tmp_path / "weights"
    shutil.copytree(tiny_weights / SDXL_VAE_FP16_FIX.folder, volume / SDXL_VAE_FP16_FIX.folder)  # one present
    with pytest.raises(MissingWeightsError):
        build_service(Settings(weights_dir=volume, device="cpu", download_weights=False))
    assert hub.fetched == []
    build_service(Settings(weights_dir=volume, device="cpu", steps=1))
    assert [repo for repo, _ in hub.fetched] == [r.repo_id for r in ALL_REPOS if r is not SDXL_VAE_FP16_FIX]
    logs = capsys.readouterr().out
    assert f"Weights missing in {volume}: downloading them" in logs
    assert f"{SDXL_VAE_FP16_FIX.repo_id}: present in" in logs
    # The volume is complete now: the next start downloads nothing.
    build_service(Settings(weights_dir=volume, device="cpu", steps=1))
    assert len(hub.fetched) == 2
