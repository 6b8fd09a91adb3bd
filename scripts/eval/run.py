"""One evaluation run: make the references, render every case and seed in the three conditions,
score every tag in the regions the localized run applied."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.engine.plan import Plan, plan_for
from model.engine.weights import TINY_MARKER, missing_repos
from model.serving.service import ImageService
from model.serving.settings import settings_from_env
from model.serving.setup import build_service
from scripts.eval.regions import ClipScorer, mask_on_output
from scripts.eval.render import Condition, Plain, Rendered, make_reference, render_case
from scripts.eval.scores import Score
from scripts.eval.suite import REFERENCE_ENTRY, REFERENCE_KEYS, REFERENCES, SUITE, Case

log = logging.getLogger("evaluate")
ROOT = Path(__file__).resolve().parent.parent.parent
FIRST_SEED = 1000  # seeds are FIRST_SEED, FIRST_SEED + 1, ...


@dataclass(frozen=True)
class Options:
    seeds: int = 4
    entry: tuple[str, str] = ("720p", "1:1")
    cases: tuple[Case, ...] = SUITE
    plain: Plain = Plain.DIFFUSERS

    @property
    def seed_list(self) -> list[int]:
        return [FIRST_SEED + k for k in range(self.seeds)]


@dataclass
class Evaluation:
    """Everything a report needs: the references, every output, every score, what was not scored
    and why, and the seconds spent."""

    options: Options
    plan: Plan
    references: dict[str, Image.Image]
    outputs: dict[tuple[str, int], dict[Condition, Rendered]] = field(default_factory=dict)
    scores: list[Score] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)
    reference_seconds: list[float] = field(default_factory=list)
    scoring_seconds: float = 0.0


def score_case(
    scorer: ClipScorer, case: Case, seed: int, outputs: dict[Condition, Rendered], plan: Plan, refs: np.ndarray
) -> tuple[list[Score], list[str]]:
    """Every tag of the case in every condition, in the region the localized run applied to it
    (the same region for all three: the scores pair). Returns the scores and what was skipped."""
    localized = outputs[Condition.LOCALIZED]
    if localized.masks is None:
        return [], [f"{case.id} seed {seed}: no mask was applied (too few steps after the warm-up)"]
    present = tuple(dict.fromkeys(ref for _, ref in case.tags))
    scores, skipped = [], []
    for k, (tag, ref) in enumerate(case.tags):
        binding = localized.bindings[k]
        if binding.index != k or binding.tag != tag:  # the masks are in request order, as the bindings
            raise RuntimeError(f"binding {k} is {binding}, expected @{tag}'s")
        mask = mask_on_output(localized.masks[k], plan)
        for condition, rendered in outputs.items():
            inside, outside = scorer.region_similarity(rendered.image, mask, refs)
            if inside is None:
                skipped.append(f"{case.id} seed {seed} @{tag}: its region is under 1% of the image")
                break
            scores.append(
                Score(
                    condition=str(condition),
                    case=case.id,
                    seed=seed,
                    tag=tag,
                    ref=ref,
                    kind=str(binding.kind),
                    area=float(mask.mean()),
                    present=present,
                    inside=dict(zip(REFERENCE_KEYS, map(float, inside), strict=True)),
                    outside=None if outside is None else float(outside[REFERENCE_KEYS.index(ref)]),
                )
            )
    return scores, skipped


def evaluate(service: ImageService, options: Options) -> Evaluation:
    """Run the whole evaluation on a loaded service."""
    plan = plan_for(*options.entry)
    scorer = ClipScorer(service.pipe.image_encoder, service.pipe.feature_extractor)
    result = Evaluation(options=options, plan=plan, references={})
    for reference in REFERENCES:
        made = make_reference(service, reference, plan_for(*REFERENCE_ENTRY))
        result.references[reference.key] = made.image
        result.reference_seconds.append(made.seconds)
        log.info("reference %s made in %.1fs", reference.key, made.seconds)
    refs = scorer.embed([result.references[key] for key in REFERENCE_KEYS])
    for case in options.cases:
        for seed in options.seed_list:
            outputs = render_case(service, case, result.references, seed, plan, options.plain)
            result.outputs[(case.id, seed)] = outputs
            started = time.perf_counter()
            scores, skipped = score_case(scorer, case, seed, outputs, plan, refs)
            result.scoring_seconds += time.perf_counter() - started
            result.scores += scores
            result.unscored += skipped
            seconds = ", ".join(f"{c} {r.seconds:.1f}s" for c, r in outputs.items())
            log.info("%s seed %d: %s", case.id, seed, seconds)
    return result


@contextmanager
def weights_folder(weights_dir: Path, tiny: bool, tiny_dir: Path | None, full_random: bool) -> Iterator[Path]:
    """The folder of weights to load: `weights_dir` (real weights), or random ones built by
    scripts/make_random_weights.py: tiny (into `tiny_dir`, kept and reused, or a temporary folder)
    or full-size (temporary, on CUDA when there is one). Temporary folders are removed at the end."""
    if not (tiny or tiny_dir or full_random):
        missing = missing_repos(weights_dir)
        if missing:
            names = ", ".join(r.repo_id for r in missing)
            raise SystemExit(
                f"--weights-dir {weights_dir} lacks {names}: run scripts/download_weights.py where the Hugging Face "
                "hub is reachable, or evaluate on random weights (--tiny: numbers meaningless)"
            )
        yield weights_dir
        return
    if tiny_dir is not None and (tiny_dir / TINY_MARKER).is_file():
        yield tiny_dir
        return
    if full_random and not torch.cuda.is_available():
        raise SystemExit("--full-random is for GPU timing: no CUDA device here (use --tiny on a CPU)")
    with tempfile.TemporaryDirectory(prefix="evaluate-weights-") as scratch:
        folder = tiny_dir or Path(scratch) / "weights"
        command = [sys.executable, str(ROOT / "scripts" / "make_random_weights.py"), str(folder)]
        if full_random:
            command += ["--size", "full", *(["--device", "cuda"] if torch.cuda.is_available() else [])]
        log.info("building %s random weights in %s", "full-size" if full_random else "tiny", folder)
        subprocess.run(command, check=True)
        yield folder


def load_service(weights: Path, steps: int | None, device: str | None) -> ImageService:
    """The server's model as GEN4_* settings configure it (GEN4_IP_ADAPTER_SCALE, GEN4_GUIDANCE, ...),
    on `weights`, nothing written beside outputs and no idle warm-up."""
    settings = replace(
        settings_from_env(),
        weights_dir=weights,
        download_weights=False,
        warmup="none",
        save_masks=False,
        masks_dir=None,
        masks_in_logs=False,
        safety_checker=False,
        **({"steps": steps} if steps is not None else {}),
        **({"device": device} if device is not None else {}),
    )
    return build_service(settings)
