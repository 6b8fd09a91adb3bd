"""CUDA graphs of the UNet step (model/engine/graphs.py), their logic checked on the CPU.

A CUDA graph replays its capture's kernels over its input buffers, with the capture's Python
decisions frozen. `rerun` does the same on a CPU: each replay runs the step again over the same
buffers with the same frozen phase and no per-pass cache, so that anything a graph would bake in
(a request's tokens, masks, embeddings, a cached projection) shows here as a wrong image. The real
capture runs in tests/engine/test_gpu.py on a GPU.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.injection import injection_runner
from model.contract.request import Request
from model.engine.graphs import StepFn, UNetGraphs, install_unet_graphs, rerun
from model.serving.service import ImageService
from model.serving.settings import Settings
from model.serving.setup import build_service
from tests.conftest import png_bytes

STEPS = 8  # warm-up is 2 steps: the base pass meets all three of its phases
ENTRY = ("1080p", "4:3")  # a base pass and a refine pass

# Every plan at a sixteenth of its pixels: a graph's keys and replays do not depend on the size.
pytestmark = pytest.mark.usefixtures("small")


def request(tmp_path: Path, prompt: str, tags: list[str], colours: tuple[str, ...], seed: int) -> Request:
    refs = []
    for colour in colours:
        path = tmp_path / f"{colour}.png"
        path.write_bytes(png_bytes((128, 128), colour))
        refs.append(path)
    return Request(prompt, *ENTRY, reference_tags=tags, reference_images=refs, seed=seed)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_image(service: ImageService, eager: ImageService, inputs: Request) -> None:
    """The graphed service writes the very bytes the eager one does."""
    assert digest(service.predict(inputs)) == digest(eager.predict(inputs))


@pytest.fixture(scope="module")
def eager(tiny_weights: Path) -> ImageService:
    return build_service(Settings(weights_dir=tiny_weights, steps=STEPS, device="cpu"))


@pytest.fixture
def graphed(tiny_weights: Path) -> tuple[ImageService, UNetGraphs]:
    service = build_service(Settings(weights_dir=tiny_weights, steps=STEPS, device="cpu"))
    return service, install_unet_graphs(service.pipe.unet, capture=rerun)


REQUESTS = [
    ("a portrait of @woman and @man standing in @park", ["park", "woman", "man"], ("green", "pink", "navy"), 1),
    # Other tokens, other images, other seed, the same kinds and shapes: the same graphs.
    ("@man, older, beside @woman, in @park at dusk", ["park", "woman", "man"], ("red", "white", "black"), 2),
]


def test_replayed_steps_make_the_eager_image_and_reuse_their_graphs(
    eager: ImageService, graphed: tuple[ImageService, UNetGraphs], tmp_path: Path
) -> None:
    service, graphs = graphed
    (tmp_path / "a").mkdir()
    first = request(tmp_path / "a", *REQUESTS[0][:3], seed=REQUESTS[0][3])
    assert_same_image(service, eager, first)
    # Base pass: warm-up, the last warm-up step (anchors record), localized; refine: carried masks.
    assert graphs.captures == 4
    assert graphs.replays == STEPS + int(STEPS * Settings.refine_strength)  # every step, base and refine
    (tmp_path / "b").mkdir()
    second = request(tmp_path / "b", *REQUESTS[1][:3], seed=REQUESTS[1][3])
    assert_same_image(service, eager, second)
    assert graphs.captures == 4


def test_no_references_take_one_graph_per_pass(
    eager: ImageService, graphed: tuple[ImageService, UNetGraphs], tmp_path: Path
) -> None:
    service, graphs = graphed
    plain = request(tmp_path, "a lighthouse in a storm", [], (), seed=3)
    assert_same_image(service, eager, plain)
    assert graphs.captures == 2


def test_a_full_cache_evicts_the_oldest_graph_and_stays_exact(
    eager: ImageService, graphed: tuple[ImageService, UNetGraphs], tmp_path: Path
) -> None:
    service, graphs = graphed
    graphs.capacity = 2
    tagged = request(tmp_path, *REQUESTS[0][:3], seed=4)
    assert_same_image(service, eager, tagged)
    assert len(graphs.graphs) == 2
    assert graphs.captures == 4


def test_a_failed_capture_leaves_its_key_eager(
    eager: ImageService, tiny_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = build_service(Settings(weights_dir=tiny_weights, steps=STEPS, device="cpu"))

    def broken(step: StepFn, pool: object) -> StepFn:
        raise RuntimeError("operation not permitted when stream is capturing")

    graphs = install_unet_graphs(service.pipe.unet, capture=broken)
    plain = request(tmp_path, "a lighthouse in a storm", [], (), seed=5)
    with caplog.at_level(logging.WARNING, logger="model.engine.graphs"):
        assert_same_image(service, eager, plain)
    assert graphs.captures == 0 and set(graphs.graphs.values()) == {None}
    assert sum("capture failed" in r.message for r in caplog.records) == 2  # once per key, not per step


def test_diffusers_own_calls_are_replayed_too_and_other_calls_run_eager(
    graphed: tuple[ImageService, UNetGraphs],
) -> None:
    """A call without a region state (diffusers' plain IP-Adapter, the benchmark's baseline) gets
    a graph of its own; a call the step loop never makes (a timestep as a Python number) does not."""
    service, graphs = graphed
    unet = service.pipe.unet
    config = unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    service.pipe.set_ip_adapter_scale(0.6)

    def inputs(seed: int, colour: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
        torch.manual_seed(seed)
        sample = torch.randn(1, config.in_channels, 16, 16)
        text = torch.randn(1, 77, config.cross_attention_dim)
        images = service.encoder.encode([Image.new("RGB", (64, 64), colour)]).ip_adapter_embeds(guidance=False)
        return (
            sample,
            text,
            {"text_embeds": torch.randn(1, pooled), "time_ids": torch.zeros(1, 6), "image_embeds": [images]},
        )

    for seed, colour in ((1, "teal"), (2, "orange")):
        sample, text, added = inputs(seed, colour)
        replayed = unet(sample, torch.tensor(10.0 * seed), text, added_cond_kwargs=added).sample
        expected = graphs.eager(sample, torch.tensor(10.0 * seed), text, added_cond_kwargs=added).sample
        assert torch.equal(replayed, expected)
    assert graphs.captures == 1 and graphs.replays == 2
    unet(sample, 10.0, text, added_cond_kwargs=added)
    assert graphs.captures == 1 and graphs.replays == 2


def test_graphs_made_under_inference_mode_serve_a_pipeline_called_under_no_grad(
    graphed: tuple[ImageService, UNetGraphs],
) -> None:
    """Predictions run under inference mode; diffusers' pipelines alone (the benchmark's plain and
    localized runs) under no_grad, which may not write into inference tensors."""
    service, graphs = graphed
    run = injection_runner(service, steps=2, width=256, height=256)
    with torch.inference_mode():
        run(True)
    captures = graphs.captures
    run(True)
    assert graphs.captures == captures and graphs.replays == 2 * 2
