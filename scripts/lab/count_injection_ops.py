"""Count the ops each denoising step dispatches, plain multi-image IP-Adapter vs tag-localized
(3 references), on any weights: the host's share of the injection's cost, independent of the
machine. Fast enough on a CPU even for the full-size architectures at a small size.

    python scripts/lab/count_injection_ops.py [--weights-dir DIR] [--steps 30] [--size 256x256] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harness.injection import count_injection_ops, injection_runner  # noqa: E402
from model.serving.settings import settings_from_env  # noqa: E402
from model.serving.setup import build_service  # noqa: E402
from scripts.bench.common import emit_json, quiet, run_facts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", default="256x256", help="WxH (the counts do not depend on it)")
    parser.add_argument("--out", type=Path, help="JSON file to write (default: print)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with quiet():
        service = build_service(replace(settings_from_env(), weights_dir=args.weights_dir, steps=args.steps))
    result = {**run_facts(service), "size": args.size, "steps": args.steps}
    result |= count_injection_ops(injection_runner(service, args.steps, width, height))
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
