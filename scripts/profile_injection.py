"""Profile plain vs tag-localized IP-Adapter denoising (torch.profiler) on full-size random weights
on CUDA: 1152x864, 10 steps, 3 references. Prints the kernel count, the top ops by GPU and by CPU
time, and the ops that wait for the device (output kept in docs/benchmarks/h100/).

    python scripts/profile_injection.py [--weights-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from model.service import Generator  # noqa: E402
from model.settings import Settings  # noqa: E402
from model.weights import missing_repos  # noqa: E402
from scripts.benchmark import build_random_weights, injection_runner  # noqa: E402

STEPS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, help="default: build full-size random weights on the GPU")
    args = parser.parse_args()
    weights = args.weights_dir
    if weights is None or missing_repos(weights):
        weights = build_random_weights("full")
    run = injection_runner(Generator(Settings(weights_dir=weights, steps=STEPS)), STEPS, 1152, 864)
    for localized in (False, True):
        run(localized)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(localized)
            torch.cuda.synchronize()
        ka = prof.key_averages()
        kernels = sum(e.count for e in ka if e.device_type.name == "CUDA")
        print("=== localized" if localized else "=== plain", "kernels:", kernels)
        print(ka.table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
        print(ka.table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))
        waits = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero")
        print("syncs", [(e.key, e.count) for e in ka if "ynchronize" in e.key or e.key in waits])


if __name__ == "__main__":
    main()
