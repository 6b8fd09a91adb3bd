"""The benchmark's in-process parts: each ratio-table entry's latency and stages, the reference
cache, a variant (turbo, compile, eager) against the default, reference decoding, the PNG writer."""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.images import photo_like
from model.contract.cache import LRUCache
from model.contract.images import decode_reference, decode_references, image_bytes
from model.contract.tables import REFERENCE_DECODE_SIDE
from model.engine.plan import plan_for
from model.engine.references import ReferenceEncoder
from model.serving.png import PngEncoder
from model.serving.service import ImageService
from model.serving.setup import build_service
from scripts.bench.common import interleaved, log, quiet, quiet_predict, request_for, time_call


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
