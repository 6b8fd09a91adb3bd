"""Benchmark: per-size latency and stages, reference-cache gain, turbo, torch.compile, server
overhead, and the cost of tag-localized injection against plain multi-image IP-Adapter; all
measured in one run.

    python scripts/benchmark.py [--weights-dir DIR] [--steps 30] [--runs 5] [--entries all|1080p|E,...]
                                [--random tiny|full] [--no-sizes] [--no-server] [--no-injection] [--no-reference-decode]
                                [--injection-size WxH] [--no-turbo] [--no-compile] [--no-graphs] [--server-warmed]
                                [--fast]
                                [--out docs/benchmarks]

Sizes: for each ratio-table entry, with 0 and with 3 tagged references, the warm latency (median of
--runs after a warm-up), denoising steps per second, each stage's time (reference encoding, text
encoding, base denoise, refine, VAE decode, resize, PNG write), the refine pass as a fraction of
the base pass, and peak GPU memory on CUDA. References: encoding time cold (new images) and
cached; and three 12 MP phone photos from file to features, decoded in full against decoded
reduced to what the image encoder reads (model/contract/images.py). PNG: the output's encoder (every
core) against Pillow's, on a photo-like image and on noise of the last entry's size. Turbo and
compile: each against the default in the same run, and what compiling adds to setup
(GEN4_COMPILE compiles and warms every size there). On CUDA, the eager step loop against the
default's CUDA graphs (GEN4_CUDA_GRAPHS), with the graphs captured and their capture time.
Server: the same request end to end through the real Cog server; its overhead is, per
prediction, the end-to-end time minus the ImageService's own time in the worker (coglet's log
timestamps), so that generation noise cancels. On CUDA (or with --server-warmed), a server with
the idle warm-up of that request's entry (GEN4_WARMUP): the warm-up's time after READY, then the
first request once it has ended, against the first request of the server without it.
Injection: the same request through the loaded pipeline as diffusers' plain multi-image IP-Adapter
and with this project's per-tag region masks, interleaved. Writes JSON and a markdown table under
docs/benchmarks/, naming device, versions and date, after each part (`complete` is false until the
end), so that a run stopped at a time limit keeps what it finished. Uses the real weights when the
folder holds them; otherwise random ones built by scripts/make_random_weights.py: the published
full-size architectures on CUDA (real GPU timings, no download), tiny ones on a CPU (then only
ratios mean anything, and only for that CPU). --fast: 2 entries, 1 run (the server parts too), 2 steps (for CI).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import base64  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from model.contract.cache import LRUCache  # noqa: E402
from model.contract.images import decode_reference, decode_references, image_bytes  # noqa: E402
from model.contract.prompt import parse_prompt  # noqa: E402
from model.contract.request import Request  # noqa: E402
from model.contract.tables import REFERENCE_DECODE_SIDE, parse_entries  # noqa: E402
from model.engine.placement.binding import RegionConfig, bind_references  # noqa: E402
from model.engine.placement.state import RegionState  # noqa: E402
from model.engine.plan import plan_for  # noqa: E402
from model.engine.references import ReferenceEncoder  # noqa: E402
from model.engine.tokens import mention_positions  # noqa: E402
from model.engine.weights import missing_repos, weights_label  # noqa: E402
from model.serving.png import PngEncoder  # noqa: E402
from model.serving.service import ImageService  # noqa: E402
from model.serving.settings import settings_from_env  # noqa: E402
from model.serving.setup import build_service  # noqa: E402
from scripts.serve import CogServer, UploadReceiver  # noqa: E402

log = logging.getLogger("benchmark")
PROMPT = "a close up portrait of @woman and @man standing in @park, hands in pockets, looking cool."
TAGS = ["park", "woman", "man"]
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


def reference_files(folder: Path, colours: tuple[str, ...] = ("green", "pink", "navy")) -> list[Path]:
    paths = []
    for colour in colours:
        path = folder / f"{colour}.png"
        Image.new("RGB", (512, 512), colour).save(path)
        paths.append(path)
    return paths


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


def bench_sizes(service: ImageService, entries: list[tuple[str, str]], refs: list[Path], runs: int) -> list[dict]:
    """Warm latency, steps/s and stages per entry, with 0 and with 3 references."""
    rows = []
    cuda = service.runtime.device.type == "cuda"
    for entry in entries:
        for references in ([], refs):
            request = request_for(entry, references)
            with quiet():
                service.predict(request)  # warm-up: allocator, caches
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            latencies, stages = [], []
            for _ in range(runs):
                latencies.append(time_call(lambda request=request: quiet_predict(service, request)))
                stages.append(dict(service.last_timings))
            median = {k: statistics.median(s.get(k, 0.0) for s in stages) for k in stages[0]}
            plan = plan_for(*entry)
            settings = service.settings
            denoise_s = median.get("base denoise", 0) + median.get("refine", 0)
            steps = plan.total_steps(settings.effective_steps, settings.refine_strength)
            rows.append(
                {
                    "entry": f"{entry[0]} {entry[1]}",
                    "size": "{}x{}".format(*plan.target),
                    "plan": plan.describe(),
                    "references": len(references),
                    "latency_s": round(statistics.median(latencies), 4),
                    "steps_per_s": round(steps / denoise_s, 2) if denoise_s else None,
                    "refine_over_base": round(median["refine"] / median["base denoise"], 3) if plan.refine else None,
                    "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
                    "stages_s": {k: round(v, 4) for k, v in median.items()},
                }
            )
            log.info("%s: %s", rows[-1]["entry"], json.dumps(rows[-1]))
    return rows


def quiet_predict(service: ImageService, request: Request) -> None:
    with quiet():
        service.predict(request)


def bench_reference_cache(service: ImageService, runs: int) -> dict:
    """Encoding 3 references never seen before against the same 3 from the cache."""
    cold, cached = [], []
    for k in range(runs):
        images = [Image.new("RGB", (512, 512), (k * 7 % 256, 40 * i, 90)) for i in range(3)]
        cold.append(time_call(lambda images=images: service.encoder.encode(images)))
        cached.append(time_call(lambda images=images: service.encoder.encode(images)))
    return {
        "cold_s": round(statistics.median(cold), 5),
        "cached_s": round(statistics.median(cached), 5),
        "speedup": round(statistics.median(cold) / statistics.median(cached), 1),
    }


# The first and the last line that ImageService.run writes to a prediction's logs (model/serving/service.py).
GENERATOR_FIRST_LINE = "Using seed:"
GENERATOR_LAST_LINE = "Generated image in"
# predict.py's Predictor with the model taken out (bench_server's floor).
FLOOR_PREDICTOR = "scripts/floor_predictor.py:FloorPredictor"


def generator_seconds(server_log: str) -> dict[str, float]:
    """Seconds from the ImageService's first log line to its last, per prediction id, by coglet's own
    timestamps in its JSON log: the model's part of each served prediction."""
    first: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for line in server_log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the worker's own stderr lines are not JSON
        fields = record.get("fields") or {}
        prediction, message = fields.get("prediction_id"), str(fields.get("message", ""))
        if prediction is None:
            continue
        stamp = dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        if message.startswith(GENERATOR_FIRST_LINE):
            first[prediction] = stamp
        elif message.startswith(GENERATOR_LAST_LINE) and prediction in first:
            seconds[prediction] = stamp - first[prediction]
    return seconds


# coglet's own log lines (its JSON log) that bound the phases of a server's start.
STARTUP_LINES = {"import": ("Loading predictor", "Running setup"), "setup": ("Running setup", "Setup complete")}


def startup_phases(server_log: str) -> dict[str, float]:
    """Seconds of each phase of the server's start, by coglet's timestamps: the worker's import of
    predict.py (torch, diffusers, ...) and Predictor.setup(), the two that time-to-READY is made of."""
    marks = {mark for pair in STARTUP_LINES.values() for mark in pair}
    stamps: dict[str, float] = {}
    for line in server_log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        message = str((record.get("fields") or {}).get("message", ""))
        if message in marks and message not in stamps:
            stamps[message] = dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
    return {
        phase: round(stamps[end] - stamps[start], 2)
        for phase, (start, end) in STARTUP_LINES.items()
        if start in stamps and end in stamps
    }


def served_inputs(entry: tuple[str, str], references: list[Path]) -> dict:
    """The benchmark's request as a Cog server takes it: the references as data URIs."""
    return {
        "prompt": PROMPT,
        "resolution": entry[0],
        "aspect_ratio": entry[1],
        "reference_tags": TAGS,
        "reference_images": ["data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for p in references],
        "seed": 1,
    }


def server_env(steps: int, folder: Path, warmup: str) -> dict[str, str]:
    """A benchmarked server's settings: its steps, its idle warm-up (GEN4_WARMUP), and its own
    queue state file in `folder` (a server already running on this machine keeps its own)."""
    return {"GEN4_STEPS": str(steps), "GEN4_QUEUE_STATE_FILE": str(folder / "queue.json"), "GEN4_WARMUP": warmup}


def bench_server(
    service: ImageService,
    weights: Path,
    steps: int,
    entry: tuple[str, str],
    refs: list[Path],
    runs: int,
    upload: bool = False,
) -> dict:
    """The same request end to end through the real Cog server and in this process, interleaved
    (after a warm-up of each). The overhead is taken per prediction: its end-to-end time minus the
    ImageService's own time inside the worker (from coglet's log timestamps), so that the run-to-run
    spread of the generation itself (seconds on a host-bound GPU) does not hide a few milliseconds.
    The difference of the medians, served minus in process, is kept for comparison. End to end
    runs from sending the request to holding the whole response (requests reads the body before
    it returns); the client's parse of its JSON, 10 ms or more for a data URI's megabytes, is
    the client's work and is reported apart. The output comes back as a data URI (the server as
    `docker run` starts it), or with `upload` as a URL after Cog PUTs the file to a receiver on
    127.0.0.1 (`--upload-url`, as Replicate serves it).

    Interleaved with them, the floor: the same request to a second server of the same interface
    whose predictor only copies a file of the same output's bytes (scripts/floor_predictor.py),
    so coglet's own cost for this request and its output, which no predictor can go below; and a
    third such server whose file is a photo-like image of the same size, written as outputs are
    (random weights make noise, PNG's largest case; a real output is nearer the photo-like)."""
    inputs = served_inputs(entry, refs)
    request = request_for(entry, refs)
    # (prediction id, end to end, coglet's predict_time, the client's parse of the response)
    served_runs: list[tuple[str, float, float, float]] = []
    floors: dict[str, list[tuple[str, float, float, float]]] = {"floor": [], "floor_photo_like": []}
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "server.log"
        # The floors' outputs: the bytes the real server returns for this request (same seed),
        # and a photo-like image of its size through the same writer.
        with quiet():
            made = service.predict(request)
        photo = service.output.write(photo_like(*plan_for(*entry).target), seed=0)
        floor_files = {}
        for name, source in (("floor", made), ("floor_photo_like", photo)):
            floor_files[name] = Path(folder) / name / source.name
            floor_files[name].parent.mkdir()
            floor_files[name].write_bytes(source.read_bytes())
        output_bytes = {name: path.stat().st_size for name, path in floor_files.items()}
        with open(log_path, "w") as server_log, open(Path(folder) / "floor.log", "w") as floor_log:
            # No idle warm-up: between its requests it would generate on the GPU that the in-process
            # runs and the floors are timed on (server_warmed measures it).
            env = server_env(steps, Path(folder), warmup="none")
            receiver = UploadReceiver() if upload else None
            upload_url = receiver.url if receiver else None
            servers = [CogServer(weights, log=server_log, extra_env=env, upload_url=upload_url)]
            try:
                setup_started = time.perf_counter()
                servers[0].wait_ready(timeout=900)
                setup_s = time.perf_counter() - setup_started
                for path in floor_files.values():
                    floor_env = {"COG_PREDICT_TYPE_STUB": FLOOR_PREDICTOR, "BENCH_FLOOR_OUTPUT": str(path)}
                    servers.append(CogServer(weights, log=floor_log, extra_env=floor_env, upload_url=upload_url))
                for server in servers[1:]:
                    server.wait_ready(timeout=900)

                def served(server: CogServer, into: list[tuple[str, float, float, float]]) -> None:
                    started = time.perf_counter()
                    response = server.predict(inputs)  # returns with the whole body read
                    seconds = time.perf_counter() - started
                    body = response.json()  # the client's work, timed apart
                    parse_s = time.perf_counter() - started - seconds
                    assert body["status"] == "succeeded", body.get("error")
                    assert not receiver or body["output"].startswith(receiver.url), body["output"][:80]
                    into.append((body["id"], seconds, body["metrics"]["predict_time"], parse_s))

                # Rounded once, here, so that the reported difference is the difference of the reported values.
                served_s, local_s, floor_s, photo_floor_s = (
                    round(s, 4)
                    for s in interleaved(
                        runs,
                        lambda: served(servers[0], served_runs),
                        lambda: quiet_predict(service, request),
                        lambda: served(servers[1], floors["floor"]),
                        lambda: served(servers[2], floors["floor_photo_like"]),
                    )
                )
            finally:
                for server in servers:
                    server.stop()
                if receiver:
                    receiver.stop()
        server_log_text = log_path.read_text()
        model_s = generator_seconds(server_log_text)
        phases = startup_phases(server_log_text)
    measured, floor = served_runs[1:], floors["floor"][1:]  # without the warm-ups
    missing = [pid for pid, *_ in measured if pid not in model_s]
    if missing:
        raise RuntimeError(f"the server log has no ImageService lines for predictions {missing}")
    overhead_s = round(statistics.median(e2e - model_s[pid] for pid, e2e, *_ in measured), 4)
    return {
        "entry": f"{entry[0]} {entry[1]}",
        "output": "uploaded to --upload-url" if upload else "data URI",
        "output_bytes": output_bytes["floor"],
        # From starting the server to READY ...
        "server_setup_s": round(setup_s, 2),
        # ... of which the worker's import of predict.py and Predictor.setup() (coglet's log).
        "server_import_s": phases.get("import"),
        "server_predictor_setup_s": phases.get("setup"),
        # The server's first request after READY, without the idle warm-up: on CUDA it captures its graphs.
        "first_request_s": round(served_runs[0][1], 4),
        "end_to_end_s": served_s,
        "in_process_s": local_s,
        "served_minus_in_process_s": round(served_s - local_s, 4),
        # Per prediction, then the median: everything but the ImageService (HTTP, coglet, inputs
        # decoded and validated, the queue's thread hops, the output encoded as a data URI) ...
        "server_overhead_s": overhead_s,
        # ... of which HTTP and coglet around the worker's predict() ...
        "http_and_coglet_s": round(statistics.median(e2e - predict for _, e2e, predict, _ in measured), 4),
        # ... and the worker's predict() around the ImageService.
        "worker_outside_generator_s": round(
            statistics.median(predict - model_s[pid] for pid, _, predict, _ in measured), 4
        ),
        # Not in the above: the client's json.loads of the response (a data URI's megabytes).
        "client_json_parse_s": round(statistics.median(parse for *_, parse in measured), 4),
        # The floor, end to end (a file copy its only work), of which HTTP and coglet around its
        # predict(); and the overhead above it: what this project's code adds to coglet's cost.
        "floor_end_to_end_s": floor_s,
        "floor_http_and_coglet_s": round(statistics.median(e2e - predict for _, e2e, predict, _ in floor), 4),
        "overhead_above_floor_s": round(overhead_s - floor_s, 4),
        # The floor with a photo-like output of the same size instead of this noise.
        "photo_like_output_bytes": output_bytes["floor_photo_like"],
        "floor_photo_like_end_to_end_s": photo_floor_s,
    }


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


def bench_variant(
    service: ImageService,
    variant: str,
    entry: tuple[str, str],
    refs: list[Path],
    runs: int,
    changes: dict[str, object] | None = None,
) -> dict:
    """A variant of the settings (`changes`, by default `variant` switched on: GEN4_TURBO=1,
    GEN4_COMPILE=1) against the default, interleaved in this process, and what the variant adds
    to setup (compile: compiling and warming every size). speedup = default / variant."""
    started = time.perf_counter()
    with quiet():
        other = build_service(replace(service.settings, **(changes or {variant: True})))
    setup_s = time.perf_counter() - started
    request = request_for(entry, refs)
    default_s, variant_s = interleaved(
        runs, lambda: quiet_predict(service, request), lambda: quiet_predict(other, request)
    )
    result = {
        "entry": f"{entry[0]} {entry[1]}",
        "references": len(refs),
        "default_s": round(default_s, 4),
        f"{variant}_s": round(variant_s, 4),
        "speedup": round(default_s / variant_s, 3),
        "setup_s": round(setup_s, 2),
        "stages_s": {k: round(v, 4) for k, v in other.last_timings.items()},
    }
    if other.compile_s is not None:
        result["compile_and_warm_up_s"] = round(other.compile_s, 2)
    for name, gen in (("default", service), (variant, other)):
        if gen.graphs is not None:  # CUDA graphs: how many this run captured, and what that cost
            result[f"{name}_graphs_captured"] = gen.graphs.captures
            result[f"{name}_graph_capture_s"] = round(gen.graphs.capture_s, 2)
    return result


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic stand-in for a generated photograph (random weights make noise, PNG's worst
    case): gradients and soft waves with a little grain."""
    # A row and a column, broadcast: the same pixels as full coordinate grids, in half the time.
    x, y = np.arange(width, dtype=np.float32)[None, :], np.arange(height, dtype=np.float32)[:, None]
    rng = np.random.default_rng(seed)
    channels = [
        128 + 60 * np.sin(x / (40 + 13 * k) + k) * np.cos(y / (55 + 7 * k)) + 40 * (x + y) / (width + height) - 20
        for k in range(3)
    ]
    pixels = np.stack(channels, -1) + rng.normal(0, 2, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def bench_reference_decode(service: ImageService, runs: int) -> dict:
    """Three 12 MP phone photos (4032x3024 JPEGs, EXIF-rotated) from file to the image encoder's
    features, as a request takes them (decode, pixel hash, preprocessing, encoding): decoded in full
    against decoded reduced to the encoder's need (`decode_reference`'s `side`), interleaved; cold
    (the encoder's cache emptied before each call) and cached (only decode and hash left); from
    the cache, the three decoded at once (as requests do) against one after the other; and the
    same three files sent again, found by their bytes in the decoded-image cache (only the files'
    hash left) against decoded again."""
    pipe = service.pipe
    identity = "benchmark"
    cold = ReferenceEncoder(pipe.image_encoder, pipe.feature_extractor, identity, capacity=8)
    cached = ReferenceEncoder(pipe.image_encoder, pipe.feature_extractor, identity, capacity=8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait: what a phone writes
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for k in range(3):
            paths.append(Path(folder) / f"phone-{k}.jpg")
            photo_like(4032, 3024, seed=k).save(paths[-1], quality=90, exif=exif.tobytes())

        files = [(path, f"reference_images[{i}]") for i, path in enumerate(paths)]
        decoded: LRUCache[Image.Image] = LRUCache(256 * 2**20, weigh=image_bytes)

        def features(
            encoder: ReferenceEncoder,
            side: int | None,
            one_thread: bool = False,
            cache: LRUCache[Image.Image] | None = None,
        ) -> None:
            if encoder is cold:
                encoder.cache = LRUCache(8)
            if one_thread:
                encoder.encode([decode_reference(path, field, side) for path, field in files])
            else:  # as a request decodes them
                encoder.encode(decode_references(files, side, cache))

        full_cold, reduced_cold, full_cached, reduced_cached, one_thread_cached, repeated = interleaved(
            runs,
            lambda: features(cold, None),
            lambda: features(cold, REFERENCE_DECODE_SIDE),
            lambda: features(cached, None),
            lambda: features(cached, REFERENCE_DECODE_SIDE),
            lambda: features(cached, REFERENCE_DECODE_SIDE, one_thread=True),
            lambda: features(cached, REFERENCE_DECODE_SIDE, cache=decoded),
        )
    # Rounded once, here, and the speedups taken from the rounded values, so that each reported
    # speedup is the ratio of the reported times.
    ms = {
        name: round(seconds * 1000, 1)
        for name, seconds in (
            ("cold_full", full_cold),
            ("cold_reduced", reduced_cold),
            ("cached_full", full_cached),
            ("cached_reduced", reduced_cached),
            ("one_thread", one_thread_cached),
            ("repeated", repeated),
        )
    }
    return {
        "photos": "3 x 4032x3024 JPEG",
        "side": REFERENCE_DECODE_SIDE,
        "cold_full_ms": ms["cold_full"],
        "cold_reduced_ms": ms["cold_reduced"],
        "cold_speedup": round(ms["cold_full"] / ms["cold_reduced"], 2),
        "cached_full_ms": ms["cached_full"],
        "cached_reduced_ms": ms["cached_reduced"],
        "cached_speedup": round(ms["cached_full"] / ms["cached_reduced"], 2),
        # The three decoded one after the other, against at once (what requests do), from the cache.
        "cached_reduced_one_thread_ms": ms["one_thread"],
        "threads_speedup": round(ms["one_thread"] / ms["cached_reduced"], 2),
        # The same files again: hashed and found in the decoded-image cache, against decoded again.
        "repeated_files_ms": ms["repeated"],
        "repeated_files_speedup": round(ms["cached_reduced"] / ms["repeated"], 2),
    }


def bench_png(entry: tuple[str, str], runs: int) -> dict:
    """The output's PNG encoding (model/serving/png.py, every core) against Pillow's (one core), both at
    deflate level 1, interleaved, on a photo-like image and on noise of the entry's size."""
    width, height = plan_for(*entry).target
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    encoder = PngEncoder()
    result: dict[str, object] = {"entry": f"{entry[0]} {entry[1]}", "threads": encoder.threads}
    for name, image in (("photo_like", photo_like(width, height)), ("noise", Image.fromarray(noise))):
        sizes: dict[str, int] = {}

        def pillow(image: Image.Image = image, sizes: dict[str, int] = sizes) -> None:
            buffer = io.BytesIO()
            image.save(buffer, "PNG", optimize=False, compress_level=1)
            sizes["pillow"] = buffer.tell()

        def ours(image: Image.Image = image, sizes: dict[str, int] = sizes) -> None:
            sizes["ours"] = len(encoder(image))

        pillow_s, ours_s = interleaved(runs, pillow, ours)
        result[f"{name}_pillow_ms"] = round(pillow_s * 1000, 1)
        result[f"{name}_ms"] = round(ours_s * 1000, 1)
        result[f"{name}_speedup"] = round(pillow_s / ours_s, 2)
        result[f"{name}_size_over_pillow"] = round(sizes["ours"] / sizes["pillow"], 4)
    return result


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops the host dispatches, views left out (on a GPU, roughly one kernel
    launch each: the denoising loop is bound by the host when launching costs more than the
    kernels run), and
    among them those that, on a GPU, wait for the device or copy Python data from the host:
    reading a value (`.item()`, `float(t)`, a branch on a tensor) and tensors made from Python
    data (`torch.tensor([...])`, indexing with a list)."""

    HOST_DATA = frozenset({"aten._local_scalar_dense.default", "aten.lift_fresh.default", "aten.nonzero.default"})

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.host_data: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func is torch.ops.aten._unsafe_view.default):
            self.ops += 1
        if str(func) in self.HOST_DATA:
            self.host_data[str(func)] = self.host_data.get(str(func), 0) + 1
        return func(*args, **(kwargs or {}))


def injection_runner(service: ImageService, steps: int, width: int, height: int) -> Callable[..., RegionState]:
    """`run(localized, on_step=None)`: one denoising (latents only) with 3 references, as diffusers'
    plain multi-image IP-Adapter or with this project's per-tag region masks; returns the run's
    region state (left unused by a plain run)."""
    pipe, runtime = service.pipe, service.runtime
    images = [Image.new("RGB", (512, 512), c) for c in ("green", "pink", "navy")]
    embeds = service.encoder.encode(images).ip_adapter_embeds(guidance=True).to(runtime.device, runtime.dtype)
    parsed = parse_prompt(PROMPT)
    bindings = bind_references(list(TAGS), parsed, mention_positions(parsed, pipe.tokenizer))
    pipe.set_ip_adapter_scale(service.settings.ip_adapter_scale)
    scale = pipe.vae_scale_factor

    def run(localized: bool, on_step: Callable[[], None] | None = None) -> RegionState:
        region = RegionState(bindings, RegionConfig(), steps, (height // scale, width // scale))

        def step_end(_pipe: object, _i: int, _t: object, kwargs: dict) -> dict:
            if localized:
                region.end_step()
            if on_step is not None:
                on_step()
            return kwargs

        pipe(
            prompt=parsed.text,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=service.settings.effective_guidance,
            ip_adapter_image_embeds=[embeds],
            generator=torch.Generator(device=runtime.device).manual_seed(1),
            cross_attention_kwargs={"region": region} if localized else None,
            callback_on_step_end=step_end,
            output_type="latent",
        )
        return region

    return run


def count_injection_ops(run: Callable[..., RegionState]) -> dict:
    """Ops dispatched at each step (views left out) and host reads, plain vs tag-localized: a
    measure of host work that does not depend on the machine. Without CUDA graphs, a GPU run
    whose kernels are small is bound by it."""
    result = {}
    for name, localized in (("plain", False), ("tag_localized", True)):
        marks: list[int] = []
        with OpCounter() as counter:
            run(localized, on_step=lambda c=counter, m=marks: m.append(c.ops))
        per_step = [b - a for a, b in zip([0, *marks], marks, strict=False)]
        result[name] = {"ops": counter.ops, "ops_per_step": per_step, "host_reads": counter.host_data}
    result["ops_ratio_localized_over_plain"] = round(result["tag_localized"]["ops"] / result["plain"]["ops"], 3)
    return result


def bench_injection(service: ImageService, steps: int, runs: int, width: int, height: int) -> dict:
    """Plain multi-image IP-Adapter vs tag-localized, denoising only, interleaved; and the ops
    each dispatches (counted once, outside the timing)."""
    run = injection_runner(service, steps, width, height)
    plain, localized = interleaved(runs, lambda: run(False), lambda: run(True))
    counts = count_injection_ops(run)
    return {
        "size": f"{width}x{height}",
        "steps": steps,
        "references": 3,
        "plain_ip_adapter_median_s": round(plain, 4),
        "tag_localized_median_s": round(localized, 4),
        "ratio_localized_over_plain": round(localized / plain, 3),
        "plain_ops": counts["plain"]["ops"],
        "tag_localized_ops": counts["tag_localized"]["ops"],
        "ops_ratio_localized_over_plain": counts["ops_ratio_localized_over_plain"],
        "host_reads_plain": sum(counts["plain"]["host_reads"].values()),
        "host_reads_tag_localized": sum(counts["tag_localized"]["host_reads"].values()),
    }


WARMUP_DONE = re.compile(r"Warm-up done: (\d+) generations in ([\d.]+)sec")


def bench_server_warmed(weights: Path, steps: int, entry: tuple[str, str], refs: list[Path]) -> dict:
    """A server with the idle warm-up of the request's entry (GEN4_WARMUP): how long the warm-up
    takes after READY, then the first and second requests once it has ended, to set against the
    `server` part's first request (no warm-up) and its end to end."""
    inputs = served_inputs(entry, refs)
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "server.log"
        with open(log_path, "w") as server_log:
            server = CogServer(
                weights, log=server_log, extra_env=server_env(steps, Path(folder), warmup=" ".join(entry))
            )
            try:
                started = time.perf_counter()
                server.wait_ready(timeout=900)
                ready_s = time.perf_counter() - started
                deadline = time.monotonic() + 900
                while not (done := WARMUP_DONE.search(text := log_path.read_text())):
                    if time.monotonic() > deadline or "Warm-up failed" in text:
                        raise RuntimeError(f"the idle warm-up did not end; server log: {text[-2000:]}")
                    time.sleep(0.1)
                requests_s = []
                for _ in range(2):
                    clock = time.perf_counter()
                    body = server.predict(inputs).json()
                    requests_s.append(round(time.perf_counter() - clock, 4))
                    assert body["status"] == "succeeded", body.get("error")
            finally:
                server.stop()
    return {
        "entry": f"{entry[0]} {entry[1]}",
        "server_setup_s": round(ready_s, 2),
        "warmup_generations": int(done.group(1)),
        # The warm-up's own account (GPU time while idle; READY came before it).
        "warmup_s": float(done.group(2)),
        "first_request_after_warmup_s": requests_s[0],
        "second_request_s": requests_s[1],
    }


def markdown(result: dict) -> str:
    """The results as the table docs/benchmarks/*.md holds."""
    lines = [
        f"# Benchmark: {result['weights']} weights on {result['device']}",
        "",
        f"{result['date']}; steps {result['steps']}, runs {result['runs']}, {result['dtype']}; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + f"; setup {result['setup_s']} s",
        "",
    ]
    if result.get("complete") is False:
        lines += ["**Incomplete**: the run stopped before its end; below are the parts it finished.", ""]
    if result.get("sizes"):
        stage_names = sorted({k for row in result["sizes"] for k in row["stages_s"]})
        lines += [
            "| entry | size | refs | latency s | steps/s | refine/base | peak GPU GB | "
            + " | ".join(stage_names)
            + " |",
            "|---" * (7 + len(stage_names)) + "|",
        ]
        for row in result["sizes"]:
            cells = [row["entry"], row["size"], row["references"], row["latency_s"], row["steps_per_s"]]
            cells += [row["refine_over_base"], row["peak_gpu_gb"]] + [row["stages_s"].get(k, "") for k in stage_names]
            lines.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
        lines.append("")
    for key in (
        "reference_cache",
        "reference_decode",
        "png",
        "turbo",
        "compile",
        "cuda_graphs",
        "server",
        "server_upload",
        "server_warmed",
        "injection",
    ):
        if result.get(key):
            lines += [f"**{key}**: " + ", ".join(f"{k} {v}" for k, v in result[key].items()), ""]
    return "\n".join(lines)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entries", default="all", help="all, 720p, 1080p, or 'RES AR,RES AR'")
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--no-sizes", action="store_true", help="skip the per-entry table")
    parser.add_argument("--no-injection", action="store_true")
    parser.add_argument(
        "--injection-size", help="WxH of the injection comparison (default: the last entry's base size)"
    )
    parser.add_argument(
        "--injection-runs", type=int, help="interleaved runs of the injection comparison (default: runs, at least 3)"
    )
    parser.add_argument("--no-turbo", action="store_true")
    parser.add_argument("--no-reference-decode", action="store_true", help="skip the 12 MP photos' decoding")
    parser.add_argument("--no-compile", action="store_true", help="skip GEN4_COMPILE (minutes of compiling)")
    parser.add_argument("--no-graphs", action="store_true", help="skip the eager step loop against CUDA graphs")
    parser.add_argument(
        "--random", choices=("tiny", "full"), help="random weights when weights/ is incomplete (default: full on CUDA)"
    )
    parser.add_argument(
        "--server-warmed", action="store_true", help="time the idle warm-up's server on a CPU too (on CUDA: always)"
    )
    parser.add_argument("--fast", action="store_true", help="2 entries, 1 run, 2 steps: a smoke run for CI")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    if args.fast:
        args.steps, args.runs, args.entries = 2, 1, "720p 16:9,1080p 4:3"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weights = args.weights_dir
    if missing_repos(weights):
        log.info("no complete weights in %s", args.weights_dir)
        weights = build_random_weights(args.random or ("full" if torch.cuda.is_available() else "tiny"))
    entries = pick_entries(args.entries)

    started = time.perf_counter()
    with quiet():
        # The server's own settings (GEN4_* variables), with this run's weights and steps; turbo
        # and compile are measured against this default below.
        settings = replace(settings_from_env(), weights_dir=weights, steps=args.steps, turbo=False, compile=False)
        service = build_service(settings)
    setup_s = time.perf_counter() - started
    stem = f"benchmark-{weights_label(weights).split()[0]}-{service.runtime.device.type}"
    args.out.mkdir(parents=True, exist_ok=True)

    def save(result: dict, complete: bool) -> None:
        """Write the results so far: a run stopped at a time limit (the GPU machine's 10 minutes)
        still leaves every finished part, marked incomplete."""
        result["complete"] = complete
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(markdown(result) + "\n")

    with tempfile.TemporaryDirectory() as folder:
        refs = reference_files(Path(folder))
        result = {**run_facts(service), "steps": args.steps, "runs": args.runs, "setup_s": round(setup_s, 2)}
        # The parts that compare two timings (cached or not, a variant or the default) take at least 3 runs;
        # --fast's server parts take one each way (a smoke run: two servers at 1080p are most of its time).
        variant_runs = max(3, args.runs)
        server_runs = args.runs if args.fast else variant_runs
        parts: list[tuple[str, Callable[[], object]]] = [
            ("sizes", lambda: [] if args.no_sizes else bench_sizes(service, entries, refs, args.runs)),
            ("reference_cache", lambda: bench_reference_cache(service, variant_runs)),
            ("png", lambda: bench_png(entries[-1], max(7, args.runs))),
        ]
        if not args.no_reference_decode:
            parts.append(("reference_decode", lambda: bench_reference_decode(service, args.runs)))
        if not args.no_turbo and not missing_repos(weights, turbo=True):
            parts.append(("turbo", lambda: bench_variant(service, "turbo", entries[-1], refs, variant_runs)))
        if not args.no_compile:
            parts.append(("compile", lambda: bench_variant(service, "compile", entries[-1], refs, variant_runs)))
        if service.graphs is not None and not args.no_graphs:
            off = {"cuda_graphs": False}
            parts.append(
                ("cuda_graphs", lambda: bench_variant(service, "eager", entries[-1], refs, variant_runs, off))
            )
        if not args.no_server:
            parts.append(
                ("server", lambda: bench_server(service, weights, args.steps, entries[-1], refs, server_runs))
            )
            parts.append(
                (
                    "server_upload",
                    lambda: bench_server(service, weights, args.steps, entries[-1], refs, server_runs, upload=True),
                )
            )
            if service.graphs is not None or args.server_warmed:  # what it saves is graph captures
                parts.append(("server_warmed", lambda: bench_server_warmed(weights, args.steps, entries[-1], refs)))
        # Last, as the longest part (--injection-runs): a run cut short loses it first.
        if not args.no_injection:
            width, height = plan_for(*entries[-1]).base
            if args.injection_size:
                width, height = (int(v) for v in args.injection_size.lower().split("x"))
            runs = args.injection_runs or variant_runs
            parts.append(("injection", lambda: bench_injection(service, args.steps, runs, width, height)))
        for key, measure in parts:
            result[key] = measure()
            save(result, complete=False)
    save(result, complete=True)
    log.info("wrote %s", args.out / f"{stem}.md")


if __name__ == "__main__":
    main()
