"""Fetch the real weights into the weights folder, in each repository's own layout.

    python scripts/download_weights.py [--weights-dir weights]

SDXL base 1.0 (fp16 variant), the fp16-fix SDXL VAE, and IP-Adapter Plus for SDXL with its ViT-H
image encoder (see model/weights.py). What is already present is skipped. Needs network access to
the Hugging Face hub; never runs at import or test time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model.weights import ALL_REPOS, missing_repos

log = logging.getLogger("download_weights")


def download(weights_dir: Path) -> None:
    """Download every repository whose marker file is missing."""
    from huggingface_hub import snapshot_download

    todo = missing_repos(weights_dir)
    for repo in ALL_REPOS:
        if repo not in todo:
            log.info("%s: present in %s, skipped", repo.repo_id, weights_dir / repo.folder)
            continue
        log.info("%s: downloading %s into %s", repo.repo_id, ", ".join(repo.allow_patterns), weights_dir / repo.folder)
        snapshot_download(
            repo_id=repo.repo_id,
            local_dir=weights_dir / repo.folder,
            allow_patterns=list(repo.allow_patterns),
            token=os.environ.get("HF_TOKEN"),
        )
    still = missing_repos(weights_dir)
    if still:
        raise SystemExit(f"still missing after download: {', '.join(r.repo_id for r in still)}")
    log.info("all weights present in %s", weights_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("WEIGHTS_DIR", "weights")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    download(args.weights_dir)


if __name__ == "__main__":
    main()
