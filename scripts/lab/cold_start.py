"""A server's start from a cold page cache: importing predict, then loading the pipeline.

Each run drops the kernel's page cache first (root only: /proc/sys/vm/drop_caches), then times,
in a fresh Python, `import predict` and `load_pipeline` from the weights folder, as the server's
worker does at setup; each mode once more with the cache warm. Modes, interleaved run by run:
- read: as the server starts (GEN4_PREFETCH on: model/serving/prefetch.py reads the weight files in a
  thread while Python imports);
- none: with GEN4_PREFETCH=0;
- fadvise: GEN4_PREFETCH=0, and the kernel asked to read the files ahead (posix_fadvise WILLNEED).

    python scripts/lab/cold_start.py --weights-dir DIR [--runs 3] [--modes none,read,fadvise]
                                 [--device cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MODES = ("none", "read", "fadvise")

from model.engine.weights import weight_files  # noqa: E402
from model.serving.prefetch import THREAD_NAME, read_files  # noqa: E402 - pure: no torch


def advise_all(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def child(mode: str, weights_dir: Path, device: str) -> dict:
    """One start, timed from this process's first line of work."""
    started = time.perf_counter()
    if mode == "fadvise":
        threading.Thread(target=advise_all, args=(weight_files(weights_dir),), daemon=True).start()
    import predict  # noqa: F401 - what the server's worker imports first (and, in "read", prefetches)

    imported = time.perf_counter()
    import torch

    from model.engine.pipeline import Runtime, load_pipeline

    dtype = torch.float16  # the files' own dtype: no conversion, as on a GPU
    load_pipeline(weights_dir, Runtime(device=torch.device(device), dtype=dtype))
    loaded = time.perf_counter()
    return {
        "mode": mode,
        "import_s": round(imported - started, 2),
        "load_s": round(loaded - imported, 2),
        "total_s": round(loaded - started, 2),
        "prefetch_finished_first": not any(t.name == THREAD_NAME for t in threading.enumerate()),
    }


def drop_page_cache() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as exc:
        raise SystemExit(f"cannot drop the page cache ({exc}): run as root on Linux") from exc


def one_run(mode: str, args: argparse.Namespace, cold: bool) -> dict:
    if cold:
        drop_page_cache()
    command = [sys.executable, __file__, "--child", mode, "--device", args.device]
    command += ["--weights-dir", str(args.weights_dir)]
    env = {**os.environ, "WEIGHTS_DIR": str(args.weights_dir), "GEN4_PREFETCH": "1" if mode == "read" else "0"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "cold": cold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.weights_dir, args.device)))
        return
    modes = args.modes.split(",")
    files = weight_files(args.weights_dir)
    size_gb = sum(p.stat().st_size for p in files) / 1e9
    drop_page_cache()
    started = time.perf_counter()
    read_files(files)
    sequential_read_s = time.perf_counter() - started
    runs = [one_run(mode, args, cold=True) for _ in range(args.runs) for mode in modes]
    runs += [one_run(mode, args, cold=False) for mode in modes]
    summary = {
        mode: {
            k: statistics.median(r[k] for r in runs if r["mode"] == mode and r["cold"])
            for k in ("import_s", "load_s", "total_s")
        }
        for mode in modes
    }
    result = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "weights_gb": round(size_gb, 2),
        "sequential_cold_read_s": round(sequential_read_s, 2),
        "median_cold": summary,
        "warm": {r["mode"]: r["total_s"] for r in runs if not r["cold"]},
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
