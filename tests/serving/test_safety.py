"""GEN4_SAFETY_CHECKER: diffusers' StableDiffusionSafetyChecker on every output, both ways.

The tiny stand-in (scripts/make_random_weights.py) is the real class in CompVis's file layout with
random values, and thresholds of 1.0 that no cosine similarity exceeds: it passes every image.
To make it flag, a test lowers the thresholds in a copy of its weights file, which is what the
published checker's thresholds are: per-concept cosine-similarity cut-offs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.server import CogServer
from model.contract.request import Request
from model.engine.pipeline import MissingWeightsError, pick_runtime
from model.engine.weights import SAFETY_CHECKER, SAFETY_CHECKER_WEIGHT
from model.serving.safety import FLAGGED_MESSAGE, SafetyChecker, UnsafeOutputError
from model.serving.service import ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from tests.conftest import OFFLINE_ENV, small_plans

CPU = pick_runtime("cpu", "float32")
IMAGE = Image.effect_mandelbrot((96, 64), (-2, -1, 1, 1), 40).convert("RGB")


def with_thresholds(weights: Path, out: Path, threshold: float) -> Path:
    """A weights folder like `weights` (its repositories linked, not copied) whose safety checker
    has every concept's threshold at `threshold`."""
    out.mkdir()
    for entry in weights.iterdir():
        if entry.name != SAFETY_CHECKER.folder:
            os.symlink(entry, out / entry.name)
    shutil.copytree(weights / SAFETY_CHECKER.folder, out / SAFETY_CHECKER.folder)
    path = out / SAFETY_CHECKER.folder / SAFETY_CHECKER_WEIGHT
    state = torch.load(path, weights_only=True)
    state["concept_embeds_weights"].fill_(threshold)
    state["special_care_embeds_weights"].fill_(threshold)
    torch.save(state, path)
    return out


@pytest.fixture(scope="module")
def flagging_weights(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Thresholds of -1: every cosine similarity is above, every image is flagged."""
    return with_thresholds(tiny_weights, tmp_path_factory.mktemp("flagging") / "weights", -1.0)


@pytest.fixture
def plans() -> Iterator[None]:
    with small_plans():
        yield


def outputs(service: ImageService) -> list[Path]:
    return [p for p in service.output.root.rglob("*") if p.is_file()]


def test_the_checker_decides_by_its_thresholds(tiny_weights: Path, tmp_path: Path) -> None:
    """Between a threshold just under and one just over the image's own similarity to the
    concepts, the verdict turns: the class's own scoring decides, nothing else."""
    checker = SafetyChecker(tiny_weights, CPU)
    assert checker.check(IMAGE).flagged is False
    model = checker.model
    pixels = checker.processor(IMAGE, return_tensors="pt").pixel_values
    with torch.no_grad():
        embed = torch.nn.functional.normalize(model.visual_projection(model.vision_model(pixels)[1]), dim=-1)
        concepts = torch.nn.functional.normalize(model.concept_embeds, dim=-1)
        best = float((embed @ concepts.T).max())
    model.concept_embeds_weights.data.fill_(best - 0.01)
    assert checker.check(IMAGE).flagged is True
    model.concept_embeds_weights.data.fill_(best + 0.01)
    assert checker.check(IMAGE).flagged is False


def test_an_output_that_passes_is_written(tiny_weights: Path, plans: None) -> None:
    service = build_service(Settings(weights_dir=tiny_weights, steps=1, device="cpu", safety_checker=True))
    path = service.predict(Request(prompt="a red car", resolution="720p", aspect_ratio="1:1", seed=1))
    assert path.is_file() and "safety check" in service.last_timings


def test_a_flagged_output_fails_the_prediction_and_nothing_is_written(flagging_weights: Path, plans: None) -> None:
    service = build_service(Settings(weights_dir=flagging_weights, steps=1, device="cpu", safety_checker=True))
    with pytest.raises(UnsafeOutputError) as raised:
        service.predict(Request(prompt="a red car", resolution="720p", aspect_ratio="1:1", seed=1))
    assert str(raised.value) == FLAGGED_MESSAGE
    assert outputs(service) == []
    # Off, the same weights write the image: the check is what failed it.
    unchecked = build_service(Settings(weights_dir=flagging_weights, steps=1, device="cpu"))
    assert unchecked.safety is None
    assert unchecked.predict(Request(prompt="a red car", resolution="720p", aspect_ratio="1:1", seed=1)).is_file()


def test_missing_checker_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=r"GEN4_SAFETY_CHECKER is on but .*pytorch_model\.bin is missing"):
        SafetyChecker(tmp_path, CPU)


def test_through_the_server_a_flagged_prediction_fails_with_the_message(flagging_weights: Path, tmp_path: Path) -> None:
    env = {"GEN4_STEPS": "1", "GEN4_SAFETY_CHECKER": "1", "TMPDIR": str(tmp_path), **OFFLINE_ENV}
    with open(tmp_path / "server.log", "w") as log:
        server = CogServer(flagging_weights, log=log, extra_env=env)
        try:
            server.wait_ready(timeout=300)
            body = server.predict({"prompt": "a red car", "resolution": "720p", "aspect_ratio": "1:1"}).json()
            assert body["status"] == "failed" and body.get("output") is None
            # coglet prefixes "Prediction failed: Async prediction failed: UnsafeOutputError: ".
            assert body["error"].endswith(FLAGGED_MESSAGE), body["error"]
            assert "black image" not in body["logs"]  # diffusers' own warning says otherwise
            assert server.wait_ready(timeout=30)["status"] == "READY"
        finally:
            server.stop()
    written = [p for p in tmp_path.rglob("gen4-*") if p.is_file() and p.suffix == ".png"]
    assert written == []
