"""Fetch the real weights into the weights folder, in each repository's own layout.

    python scripts/download_weights.py [--weights-dir weights]

SDXL base 1.0 (fp16 variant), the fp16-fix SDXL VAE, and IP-Adapter Plus for SDXL with its ViT-H
image encoder (see model/engine/weights.py), each at its pinned commit, every file checked against
the hub's hashes for it. What is already present is skipped; a repository that the
local Hugging Face cache (HF_HUB_CACHE) already holds whole is hard-linked from there (copied
across filesystems) without the hub. Anything else needs network access to the Hugging Face hub;
never runs at import or test time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.serving.download import download_missing

log = logging.getLogger("download_weights")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("WEIGHTS_DIR", "weights")))
    parser.add_argument("--turbo", action="store_true", help="also SDXL-Lightning's 4-step LoRA (GEN4_TURBO=1)")
    parser.add_argument(
        "--safety-checker", action="store_true", help="also the Stable Diffusion safety checker (GEN4_SAFETY_CHECKER=1)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    download_missing(args.weights_dir, say=log.info, turbo=args.turbo, safety_checker=args.safety_checker)
    log.info("all weights present in %s", args.weights_dir)


if __name__ == "__main__":
    main()
