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
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


import torch  # noqa: E402

from harness.images import reference_files  # noqa: E402
from model.engine.plan import plan_for  # noqa: E402
from model.engine.weights import missing_repos, weights_label  # noqa: E402
from model.serving.settings import settings_from_env  # noqa: E402
from model.serving.setup import build_service  # noqa: E402
from scripts.bench.common import build_random_weights, log, pick_entries, quiet, run_facts  # noqa: E402
from scripts.bench.generation import (  # noqa: E402
    bench_png,
    bench_reference_cache,
    bench_reference_decode,
    bench_sizes,
    bench_variant,
)
from scripts.bench.injection import bench_injection  # noqa: E402
from scripts.bench.server import bench_server, bench_server_warmed  # noqa: E402


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
            parts.append(("cuda_graphs", lambda: bench_variant(service, "eager", entries[-1], refs, variant_runs, off)))
        if not args.no_server:
            parts.append(("server", lambda: bench_server(service, weights, args.steps, entries[-1], refs, server_runs)))
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
