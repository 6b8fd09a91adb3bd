"""Warm `load_pipeline` with our UNet's one-walk IP-Adapter conversion against diffusers' own
(`_convert_ip_adapter_attn_to_diffusers`, which reads `unet.attn_processors` once per processor),
interleaved in one process. The code of the run in this folder; not part of the project.

    .venv/bin/python docs/benchmarks/setup-cpu/ip_adapter_load.py WEIGHTS_DIR PAIRS OUT.json
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import diffusers
import torch
from diffusers import UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import model.pipeline as mp


def main() -> None:
    weights, pairs, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    runtime = mp.Runtime(torch.device("cpu"), torch.float16)
    modes = {
        "one walk (ours)": mp.UNet._convert_ip_adapter_attn_to_diffusers,
        "a walk per processor (diffusers)": UNet2DConditionModel._convert_ip_adapter_attn_to_diffusers,
    }
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    mp.load_pipeline(weights, runtime)  # page cache and lazy imports
    for i in range(pairs):
        for mode in list(modes)[:: 1 if i % 2 == 0 else -1]:
            mp.UNet._convert_ip_adapter_attn_to_diffusers = modes[mode]
            started = time.perf_counter()
            mp.load_pipeline(weights, runtime)
            seconds[mode].append(round(time.perf_counter() - started, 3))
    result = {
        "what": "warm load_pipeline (weights in the page cache), CPU, fp16, interleaved",
        "weights": str(weights),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "seconds": seconds,
        "median_s": {mode: statistics.median(v) for mode, v in seconds.items()},
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["median_s"]))


if __name__ == "__main__":
    main()
