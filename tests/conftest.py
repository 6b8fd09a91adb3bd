"""Shared fixtures: tiny weights built once per session, real image files, a real Cog server."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from harness.server import CogServer
from model.engine.plan import PLANS, Plan

ROOT = Path(__file__).resolve().parent.parent
# Servers under test reach nothing but 127.0.0.1: any other URL (a fuzzed webhook, a reference
# URL) goes to a proxy that refuses. Webhooks and uploads to 127.0.0.1 pass (NO_PROXY).
OFFLINE_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}
for _name in list(OFFLINE_ENV):
    OFFLINE_ENV[_name.lower()] = OFFLINE_ENV[_name]
# The tests' reference images are served on 127.0.0.1, which a server refuses by default
# (model/serving/fetch.py); tests of that refusal set it back to 0.
OFFLINE_ENV["GEN4_REFERENCE_ALLOW_PRIVATE"] = "1"
SHARED = Path(os.environ.get("GEN4_SHARED_DIR", ROOT.parent / "shared"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
    config.addinivalue_line("markers", "real_weights: needs the real weights in weights/")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random weights in the real layout, built by the project's own script (its output is
    kept in `build_log(out)`)."""
    out = tmp_path_factory.mktemp("tiny-weights")
    script = ROOT / "scripts" / "make_random_weights.py"
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True)
    build_log(out).write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"make_random_weights.py failed:\n{done.stdout}{done.stderr}"
    return out


def build_log(weights: Path) -> Path:
    """Where the `tiny_weights` fixture keeps what the weights' build printed."""
    return weights.with_name(weights.name + ".log")


@contextmanager
def small_plans(factor: int = 4) -> Iterator[None]:
    """Every entry's plan at about 1/factor² of its pixels, each still refined or downscaled as at
    full size, for tests whose logic does not depend on the size: the tiny model's CPU steps at
    1 MP take most of a second."""

    def shrink(plan: Plan) -> Plan:
        (bw, bh), (tw, th) = plan.base, plan.target
        # The base a multiple of 32 like SDXL's; the target of 8 (the VAE's), odd latents as at 1080.
        small = Plan(
            base=(bw // factor // 32 * 32, bh // factor // 32 * 32),
            target=(tw // factor // 8 * 8, th // factor // 8 * 8),
        )
        assert small.refine == plan.refine, (plan, small)
        return small

    with pytest.MonkeyPatch.context() as patch:
        for entry, plan in list(PLANS.items()):
            patch.setitem(PLANS, entry, shrink(plan))
        yield


@pytest.fixture(scope="module")
def small() -> Iterator[None]:
    """`small_plans` for a whole test module whose logic does not depend on the output's size."""
    with small_plans():
        yield


def png_bytes(size: tuple[int, int] = (256, 256), color: str = "red", mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_from_data_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


@pytest.fixture(scope="session")
def queue_state_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's server publishes its queue (predictions admitted and not finished)."""
    return tmp_path_factory.mktemp("server") / "queue.json"


@pytest.fixture(scope="session")
def cog_server(tiny_weights: Path, queue_state_file: Path) -> Iterator[CogServer]:
    folder = queue_state_file.parent
    tmp = folder / "tmp"  # the server's TMPDIR, to see what it leaves behind
    tmp.mkdir()
    with open(folder / "server.log", "w") as log:
        env = {"GEN4_STEPS": "2", "GEN4_QUEUE_STATE_FILE": str(queue_state_file), "TMPDIR": str(tmp), **OFFLINE_ENV}
        server = CogServer(tiny_weights, log=log, extra_env=env)
        try:
            server.wait_ready(timeout=300)
            yield server
        finally:
            server.stop()
    # Every output the server wrote (dozens over the session) goes when it stops.
    assert not list(tmp.glob("gen4-out-*")), f"the stopped server left its outputs in {tmp}"
    # No prediction of the session failed with an error that says nothing (issue 36).
    failed = [
        e["fields"] for e in server_events(folder / "server.log") if e["fields"].get("message") == "Prediction failed"
    ]
    assert not [f for f in failed if says_nothing(f.get("error"))], failed


def server_events(path: Path) -> list[dict]:
    """Every event in a coglet server's JSON log."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def says_nothing(error: str | None) -> bool:
    """An error that is empty, or names a kind of failure and then nothing, as coglet's
    "Input validation error: " for an exception without a message."""
    return not (error or "").strip() or (error or "").rstrip().endswith(":")
