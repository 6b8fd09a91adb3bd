"""What GEN4_SAFETY_CHECKER costs: load time, resident memory, and time per checked image.

    python scripts/safety_cost.py [--weights-dir DIR] [--runs 10] [--device cpu] [--dtype auto]
                                  [--out docs/benchmarks/safety-cpu/safety-cost.json]

Without --weights-dir it builds the checker at its published size (CLIP ViT-L/14 at 224 px, the
CompVis configuration) with random values in the real file layout (scripts/make_random_weights.py):
the arithmetic, and so the time and memory, do not depend on the values. It then loads it as the
server does (model/serving/safety.py) and checks a 1440x1080 image (Replicate's default output
size) `runs` times, in a fresh Python (the build's memory does not count). Memory: the process's
resident set (and on CUDA, allocated memory) before loading, after the first check (the weights
file is memory-mapped: its pages count once read), and its peak. The load average goes with the
numbers: on a shared machine they move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from model.engine.pipeline import pick_runtime  # noqa: E402
from model.serving.safety import SafetyChecker  # noqa: E402
from scripts.bench.common import emit_json  # noqa: E402


def rss_mb() -> float:
    """The process's resident set now (Linux /proc), in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB on Linux


def measure(weights_dir: Path, runs: int, device: str, dtype: str) -> dict:
    runtime = pick_runtime(device, dtype)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1080, 1440, 3), dtype=np.uint8))
    before = rss_mb()
    started = time.perf_counter()
    checker = SafetyChecker(weights_dir, runtime)
    load_s = time.perf_counter() - started
    loaded = rss_mb()
    params = sum(p.numel() for p in checker.model.parameters())
    first = checker.check(image).seconds  # also reads the mapped weights and warms the allocator
    checked = rss_mb()
    times = [checker.check(image).seconds for _ in range(runs)]
    result = {
        "device": str(runtime.device),
        "dtype": str(runtime.dtype).removeprefix("torch."),
        "parameters": params,
        "load_s": round(load_s, 2),
        "rss_before_load_mb": round(before, 1),
        "rss_after_load_mb": round(loaded, 1),
        "rss_after_first_check_mb": round(checked, 1),
        "rss_added_mb": round(checked - before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "first_check_s": round(first, 3),
        "check_s_median": round(statistics.median(times), 4),
        "check_s_min": round(min(times), 4),
        "check_s_max": round(max(times), 4),
        "runs": runs,
        "image": "1440x1080 RGB",
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_1min_after": os.getloadavg()[0],
    }
    if runtime.device.type == "cuda":
        result["cuda_allocated_mb"] = round(torch.cuda.memory_allocated() / 1e6, 1)
        result["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, help="a weights folder holding the safety checker")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.weights_dir, args.runs, args.device, args.dtype)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights_dir
        if weights is None:
            from model.engine.weights import SAFETY_CHECKER
            from scripts.make_random_weights import FULL, write_safety_checker

            weights = Path(scratch)
            write_safety_checker(weights / SAFETY_CHECKER.folder, FULL)
        command = [sys.executable, __file__, "--child", "--weights-dir", str(weights), "--runs", str(args.runs)]
        command += ["--device", args.device, "--dtype", args.dtype]
        child = subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    result["weights"] = "published size, random values" if args.weights_dir is None else str(args.weights_dir)
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
