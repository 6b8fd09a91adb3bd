"""Profile plain vs tag-localized IP-Adapter denoising (torch.profiler) with 3 references. Prints
the op (and on CUDA the kernel) count, the top ops by device and by CPU time, and the ops that
wait for the device. Defaults: full-size random weights built on the GPU, 1152x864, 10 steps
(output kept in docs/benchmarks/h100/). On a CPU, pass --weights-dir (random full-size weights
from `scripts/make_random_weights.py --size full`) and a smaller --size.

    python scripts/lab/profile_injection.py [--weights-dir DIR] [--size 1152x864] [--steps 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from harness.injection import injection_runner  # noqa: E402
from model.engine.weights import missing_repos  # noqa: E402
from model.serving.settings import Settings  # noqa: E402
from model.serving.setup import build_service  # noqa: E402
from scripts.bench.common import build_random_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, help="default: build full-size random weights on the GPU")
    parser.add_argument("--size", default="1152x864", help="WxH of the denoising")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    weights = args.weights_dir
    if weights is None or missing_repos(weights):
        weights = build_random_weights("full")
    width, height = (int(v) for v in args.size.lower().split("x"))
    # Eager: the ops each step dispatches (a CUDA graph replays the same kernels in one launch).
    service = build_service(Settings(weights_dir=weights, steps=args.steps, cuda_graphs=False))
    cuda = service.runtime.device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    sort = "cuda_time_total" if cuda else "self_cpu_time_total"
    run = injection_runner(service, args.steps, width, height)
    for localized in (False, True):
        run(localized)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            run(localized)
            if cuda:
                torch.cuda.synchronize()
        ka = prof.key_averages()
        ops = sum(e.count for e in ka if e.key.startswith("aten::"))
        kernels = sum(e.count for e in ka if e.device_type.name == "CUDA")
        print("=== localized" if localized else "=== plain", "aten ops:", ops, "kernels:", kernels)
        print(ka.table(sort_by=sort, row_limit=14, max_name_column_width=60))
        if cuda:
            print(ka.table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
        waits = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero")
        print("syncs", [(e.key, e.count) for e in ka if "ynchronize" in e.key or e.key in waits])


if __name__ == "__main__":
    main()
