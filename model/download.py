"""Fetch missing weights from the Hugging Face hub into the weights folder, each repository in its
own layout (model/weights.py). Used by scripts/download_weights.py and, when enabled, at setup, so
that `docker run -v "$PWD/weights:/src/weights"` fills an empty volume once and reuses it after.

Never runs at import or test time: only when called, and only for what is missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from model.weights import missing_repos, required_repos

Say = Callable[[str], None]


def download_missing(weights_dir: Path, say: Say = print, turbo: bool = False) -> None:
    """Download every repository whose marker file is missing, saying what happens (the setup
    logs); huggingface_hub's own progress bars go to stderr."""
    from huggingface_hub import snapshot_download  # only when a download really happens

    todo = missing_repos(weights_dir, turbo)
    for repo in required_repos(turbo):
        target = weights_dir / repo.folder
        if repo not in todo:
            say(f"{repo.repo_id}: present in {target}")
            continue
        say(f"{repo.repo_id}: downloading {len(repo.allow_patterns)} file pattern(s) into {target}")
        started = time.perf_counter()
        snapshot_download(
            repo_id=repo.repo_id,
            local_dir=target,
            allow_patterns=list(repo.allow_patterns),
            token=os.environ.get("HF_TOKEN"),
        )
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        say(f"{repo.repo_id}: {size / 1e9:.2f} GB in {time.perf_counter() - started:.0f}s")
    still = missing_repos(weights_dir, turbo)
    if still:
        raise RuntimeError(f"still missing after download: {', '.join(r.repo_id for r in still)}")
