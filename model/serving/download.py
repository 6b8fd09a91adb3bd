"""Fetch missing weights from the Hugging Face hub into the weights folder, each repository in its
own layout (model/engine/weights.py). Used by scripts/download_weights.py and, when enabled, at setup, so
that `docker run -v "$PWD/weights:/src/weights"` fills an empty volume once and reuses it after.

Each repository is fetched at the commit that model/engine/weights.py pins, and every file fetched
is checked against the hub's own record for that commit (the sha256 of a large file, the git blob
id of a small one) and against a sha256 the table pins; a file that differs is deleted and the
download fails, naming it.

A repository that the local Hugging Face cache already holds whole at that commit (a machine that
has run these models with diffusers) is taken from there, hard-linked, without the hub.

Never runs at import or test time: only when called, and only for what is missing.
"""

from __future__ import annotations

import hashlib
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
                revision=repo.revision,
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


class WeightsIntegrityError(RuntimeError):
    """A downloaded file is not the one the pinned commit holds."""


def file_digest(path: Path, algorithm: str) -> str:
    """The file's hex digest: "sha256", or "git-blob" (the sha1 git names a small file by)."""
    digest = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1()
    if algorithm == "git-blob":
        digest.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hub_digests(repo: WeightsRepo) -> dict[str, tuple[str, str]]:
    """What the hub records for each file of the repository at its revision: path ->
    ("sha256", digest) for a large (LFS) file, ("git-blob", sha1) for a small one."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(
        repo.repo_id, revision=repo.revision, files_metadata=True, token=os.environ.get("HF_TOKEN")
    )
    return {
        s.rfilename: ("sha256", s.lfs.sha256) if s.lfs is not None else ("git-blob", s.blob_id or "")
        for s in info.siblings or []
    }


def verify(repo: WeightsRepo, target: Path, expected: dict[str, tuple[str, str]]) -> int:
    """Check every file of the repository in `target` against `expected` (hub_digests) and the
    table's pinned sha256; return how many were checked. A file that differs, or that the hub
    does not list, is deleted with the repository's marker (so that the folder counts as missing)
    and WeightsIntegrityError names it."""
    pinned = dict(repo.sha256)
    bad: dict[Path, str] = {}
    files = sorted({p for pattern in repo.allow_patterns for p in target.glob(pattern) if p.is_file()})
    for path in files:
        name = path.relative_to(target).as_posix()
        algorithm, want = expected.get(name, ("sha256", ""))
        if name in pinned:
            if algorithm == "sha256" and want and want != pinned[name]:
                bad[path] = f"{name}: the hub says sha256 {want}, the table pins {pinned[name]}"
                continue
            algorithm, want = "sha256", pinned[name]
        if not want:
            bad[path] = f"{name}: not listed by the hub at {repo.revision or 'main'}"
        elif (got := file_digest(path, algorithm)) != want:
            bad[path] = f"{name}: {algorithm} {got}, expected {want}"
    if bad:
        for path in [*bad, target / repo.marker]:
            path.unlink(missing_ok=True)
        raise WeightsIntegrityError(
            f"{repo.repo_id} at {repo.revision or 'main'}: {len(bad)} file(s) differ from what the commit "
            f"holds and were deleted: {'; '.join(bad.values())}"
        )
    return len(files)


def download_missing(
    weights_dir: Path,
    say: Say = print,
    turbo: bool = False,
    cache_dir: Path | None = None,
    safety_checker: bool = False,
) -> None:
    """Take every repository whose marker file is missing from the local Hugging Face cache, or
    else download it at its pinned revision and verify it, saying what happens (the setup logs);
    huggingface_hub's own progress bars go to stderr."""
    from huggingface_hub import snapshot_download  # only when a download really happens

    todo = missing_repos(weights_dir, turbo, safety_checker)
    for repo in required_repos(turbo, safety_checker):
        target = weights_dir / repo.folder
        if repo not in todo:
            say(f"{repo.repo_id}: present in {target}")
            continue
        how = from_hf_cache(repo, target, cache_dir)
        if how is not None:
            say(f"{repo.repo_id}: {how} into {target} from the local Hugging Face cache")
            continue
        at = repo.revision or "main (no pinned revision: what it holds may change)"
        say(f"{repo.repo_id}: downloading {len(repo.allow_patterns)} file pattern(s) at {at} into {target}")
        started = time.perf_counter()
        snapshot_download(
            repo_id=repo.repo_id,
            revision=repo.revision,
            local_dir=target,
            allow_patterns=list(repo.allow_patterns),
            token=os.environ.get("HF_TOKEN"),
        )
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        checked = verify(repo, target, hub_digests(repo))
        say(f"{repo.repo_id}: {size / 1e9:.2f} GB in {time.perf_counter() - started:.0f}s, {checked} files verified")
    still = missing_repos(weights_dir, turbo, safety_checker)
    if still:
        raise RuntimeError(f"still missing after download: {', '.join(r.repo_id for r in still)}")
