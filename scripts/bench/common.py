"""What every part of the benchmark uses: timing, quiet runs, requests, the run's facts, output."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import diffusers
import torch

from harness.injection import PROMPT, TAGS
from harness.server import ROOT
from model.contract.request import Request
from model.contract.tables import parse_entries
from model.engine.weights import weights_label
from model.serving.service import ImageService

log = logging.getLogger("benchmark")


PATH_SETTINGS = ("weights_dir", "queue_state_file")  # machine-specific: left out of the results


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def time_call(fn: object) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def quiet() -> contextlib.AbstractContextManager:
    """The prediction logs go to stdout; keep the benchmark's own output readable."""
    return contextlib.redirect_stdout(io.StringIO())


def request_for(entry: tuple[str, str], references: list[Path]) -> Request:
    resolution, aspect = entry
    return Request(
        prompt=PROMPT if references else "a lighthouse on a cliff at dusk",
        resolution=resolution,
        aspect_ratio=aspect,
        reference_tags=TAGS[: len(references)],
        reference_images=references,
        seed=1,
    )


def quiet_predict(service: ImageService, request: Request) -> None:
    with quiet():
        service.predict(request)


def interleaved(runs: int, *calls: Callable[[], object]) -> list[float]:
    """Median seconds of each call, after one warm-up of each, alternating them run by run so
    that drift in the machine (clocks, other load) hits all of them alike."""
    for call in calls:
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, seconds in zip(calls, times, strict=True):
            seconds.append(time_call(call))
    return [statistics.median(seconds) for seconds in times]


def pick_entries(spec: str) -> list[tuple[str, str]]:
    try:
        return parse_entries(spec)
    except ValueError as exc:
        raise SystemExit(f"--entries: {exc}") from None


def build_random_weights(size: str) -> Path:
    """A new folder of random weights (scripts/make_random_weights.py), built on the GPU if any."""
    weights = Path(tempfile.mkdtemp(prefix=f"{size}-random-weights-"))
    log.info("building %s random weights in %s", size, weights)
    command = [sys.executable, str(ROOT / "scripts" / "make_random_weights.py"), str(weights), "--size", size]
    if torch.cuda.is_available():
        command += ["--device", "cuda"]
    subprocess.run(command, check=True)
    return weights


def run_facts(service: ImageService) -> dict:
    """What a result needs to be read: date, device, weights, versions, dtype and settings."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device_name(),
        "weights": weights_label(service.settings.weights_dir),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "dtype": str(service.runtime.dtype).removeprefix("torch."),
        "settings": {k: str(v) for k, v in asdict(service.settings).items() if k not in PATH_SETTINGS},
    }


def emit_json(result: dict, out: Path | None) -> None:
    """Print a result as JSON, and write it to `out` too when given (the folders made)."""
    text = json.dumps(result, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
