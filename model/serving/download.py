"""Fetch missing weights from the Hugging Face hub into the weights folder, each repository in its
own layout (model/engine/weights.py). Used by scripts/download_weights.py and, when enabled, at setup, so
that `docker run -v "$PWD/weights:/src/weights"` fills an empty volume once and reuses it after.

A repository that the local Hugging Face cache already holds whole (a machine that has run these
models with diffusers) is taken from there, hard-linked, without the hub.

Never runs at import or test time: only when called, and only for what is missing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from model.engine.weights import WeightsRepo, missing_repos, required_repos

Say = Callable[[str], None]


def from_hf_cache(repo: WeightsRepo, target: Path, cache_dir: Path | None = None) -> str | None:
    """Fill `target` from the local Hugging Face cache (`HF_HUB_CACHE`, or `cache_dir`) when it holds
    a file for every one of the repository's patterns; return "linked" or "copied", or None (and
    write nothing) when it does not. Hard links cost no space and, unlike symlinks into the cache,
    stay valid in a Docker volume; across filesystems the files are copied. Never uses the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(
            snapshot_download(
                repo_id=repo.repo_id,
                allow_patterns=list(repo.allow_patterns),
                cache_dir=cache_dir,
                local_files_only=True,
            )
        )
    except LocalEntryNotFoundError:  # not cached, or cached in part
        return None
    found = {pattern: [p for p in snapshot.glob(pattern) if p.is_file()] for pattern in repo.allow_patterns}
    if not all(found.values()):
        return None
    # The marker last: a copy cut short leaves the folder counted as missing.
    files = sorted({p for paths in found.values() for p in paths}, key=lambda p: p == snapshot / repo.marker)
    how = "linked"
    for source in files:
        dest = target / source.relative_to(snapshot)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(source.resolve(), dest)  # the cache's snapshot entries are symlinks to its blobs
        except OSError:  # another filesystem, or links not allowed there
            shutil.copyfile(source, dest)
            how = "copied"
    return how


def download_missing(weights_dir: Path, say: Say = print, turbo: bool = False, cache_dir: Path | None = None) -> None:
    """Take every repository whose marker file is missing from the local Hugging Face cache, or
    else download it, saying what happens (the setup logs); huggingface_hub's own progress bars go
    to stderr."""
    from huggingface_hub import snapshot_download  # only when a download really happens

    todo = missing_repos(weights_dir, turbo)
    for repo in required_repos(turbo):
        target = weights_dir / repo.folder
        if repo not in todo:
            say(f"{repo.repo_id}: present in {target}")
            continue
        how = from_hf_cache(repo, target, cache_dir)
        if how is not None:
            say(f"{repo.repo_id}: {how} into {target} from the local Hugging Face cache")
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
