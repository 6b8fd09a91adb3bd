"""What the engine's in-process tests share: a service on the tiny weights (one per test module),
plain-colour reference files, and plans shrunk for one test."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from model.contract.request import Request
from model.serving.service import ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from tests.conftest import png_bytes, small_plans


@pytest.fixture(scope="module")
def service(tiny_weights: Path) -> ImageService:
    return build_service(Settings(weights_dir=tiny_weights, steps=1, device="cpu"))


def reference(tmp_path: Path, color: str, size: tuple[int, int] = (256, 256)) -> Path:
    path = tmp_path / f"{color}.png"
    path.write_bytes(png_bytes(size, color))
    return path


def tagged(tmp_path: Path, prompt: str, tags: list[str], resolution: str, aspect_ratio: str, seed: int) -> Request:
    """A request with one plain-colour reference per tag."""
    refs = [reference(tmp_path, colour) for colour in ("green", "pink", "navy")[: len(tags)]]
    return Request(prompt, resolution, aspect_ratio, reference_tags=tags, reference_images=refs, seed=seed)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_for_one_test() -> Iterator[None]:
    """Plans at a sixteenth of their pixels for one test (conftest's `small` is for a whole module;
    here the other tests check full sizes): what runs once per pass or per call, counts and bytes
    compared, does not depend on the size."""
    with small_plans():
        yield
