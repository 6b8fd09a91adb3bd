"""Placement quality, measured where the weights are: does each reference land where its @tag is?

    python scripts/evaluate.py [--weights-dir weights] [--tiny | --tiny-weights-dir DIR | --full-random]
                               [--seeds 4] [--steps 30] [--device auto] [--entry "720p 1:1"]
                               [--plain diffusers|global] [--cases noun,three,...] [--out outputs/evaluation]

Self-contained: the model makes four references from text (a person, a second person, an object, a
place; fixed prompts and seeds), then renders a fixed suite of tagged prompts over --seeds seeds in
three conditions: text only, plain multi-image IP-Adapter, and this project's localization. Per tag
it measures CLIP image similarity (the pipeline's ViT-H image encoder) of its own reference inside
the region the localized run applied to it, against outside it and against the other references:
a leakage matrix per condition, bootstrap confidence intervals, and paired differences against plain
IP-Adapter. Writes report.md, results.json and PNG files (references, every output, mask overlays,
a grid) into --out. GEN4_* settings apply as for the server (GEN4_IP_ADAPTER_SCALE, GEN4_GUIDANCE...).

Real weights from --weights-dir (scripts/download_weights.py fetches them). --tiny builds tiny random
weights into a temporary folder (or uses/builds --tiny-weights-dir) and --full-random the published
architectures with random values (on the GPU, timing only): the report then says its numbers are
meaningless. See docs/evaluate.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.contract.tables import parse_entries  # noqa: E402
from scripts.eval.render import Plain  # noqa: E402
from scripts.eval.report import write_report  # noqa: E402
from scripts.eval.run import Options, evaluate, load_service, weights_folder  # noqa: E402
from scripts.eval.suite import CASES, DEFAULT_ENTRY, SUITE  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights", help="real weights (default weights/)")
    random = parser.add_mutually_exclusive_group()
    random.add_argument("--tiny", action="store_true", help="tiny random weights in a temporary folder")
    random.add_argument("--tiny-weights-dir", type=Path, help="tiny random weights here (built if missing, kept)")
    random.add_argument("--full-random", action="store_true", help="full-size random weights (GPU timing only)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per case (default 4)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: GEN4_STEPS or 30)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: GEN4_DEVICE or auto)")
    parser.add_argument("--entry", default=" ".join(DEFAULT_ENTRY), help='output size, e.g. "1080p 16:9"')
    parser.add_argument("--plain", choices=[p.value for p in Plain], default=Plain.DIFFUSERS.value)
    parser.add_argument("--cases", default="all", help=f"all, or a comma list of: {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "evaluation")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    try:
        entries = parse_entries(args.entry)
    except ValueError as exc:
        parser.error(f"--entry: {exc}")
    if len(entries) != 1:
        parser.error(f'--entry: one entry, a resolution and an aspect ratio such as "720p 1:1", got {args.entry!r}')
    args.entry = entries[0]
    unknown = [c for c in args.cases.split(",") if c not in CASES] if args.cases != "all" else []
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; the suite's cases are {', '.join(CASES)}")
    return args


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    cases = SUITE if args.cases == "all" else tuple(CASES[c] for c in args.cases.split(","))
    options = Options(seeds=args.seeds, entry=args.entry, cases=cases, plain=Plain(args.plain))
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with weights_folder(args.weights_dir, args.tiny, args.tiny_weights_dir, args.full_random) as weights:
        service = load_service(weights, args.steps, args.device)
        result = evaluate(service, options)
        report = write_report(service, result, args.out, date)
    print(f"Report written to {report}")
    return report


if __name__ == "__main__":
    main()
