"""Per tag and condition, how much the output looks like each reference inside the tag's region
and like its own reference outside it; and what the report makes of them: a summary per
condition, the leakage matrix, paired differences against plain IP-Adapter. Numpy only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scripts.eval.stats import Interval, bootstrap_ci, paired_difference
from scripts.eval.suite import REFERENCE_KEYS


@dataclass(frozen=True)
class Score:
    """One tag of one output. `inside`: cosine similarity of the region's view with each of the
    suite's references; `outside`: of the view outside the region with its own reference (None
    when the region is all of the image)."""

    condition: str
    case: str
    seed: int
    tag: str
    ref: str  # the tag's reference
    kind: str  # where the localized run applied it (subject, place, global)
    area: float  # the region's share of the output
    present: tuple[str, ...]  # the request's references
    inside: dict[str, float]
    outside: float | None

    @property
    def key(self) -> tuple[str, int, str]:
        """What pairs this score with the same tag's in another condition."""
        return (self.case, self.seed, self.tag)

    @property
    def own_inside(self) -> float:
        return self.inside[self.ref]

    @property
    def contrast(self) -> float | None:
        """Own reference inside the region minus outside it: placement (higher: better)."""
        return None if self.outside is None else self.own_inside - self.outside

    @property
    def others_inside(self) -> float | None:
        """The request's other references inside this tag's region: leakage into it."""
        others = [self.inside[r] for r in self.present if r != self.ref]
        return float(np.mean(others)) if others else None

    @property
    def margin(self) -> float | None:
        """Own reference minus the others, inside the region: separation (higher: better)."""
        others = self.others_inside
        return None if others is None else self.own_inside - others


Metric = Callable[[Score], float | None]
METRICS: dict[str, Metric] = {
    "own ref inside": lambda s: s.own_inside,
    "own ref outside": lambda s: s.outside,
    "inside - outside": lambda s: s.contrast,
    "other refs inside": lambda s: s.others_inside,
    "own - others inside": lambda s: s.margin,
}
OUTSIDE = "own ref outside"  # the leakage matrix's last column


def group(key: tuple[str, int, str]) -> tuple[str, int]:
    """The bootstrap's unit: one output image (a case and a seed), whatever its tags."""
    return key[:2]


def interval(scores: list[Score], metric: Metric) -> Interval | None:
    """The metric's mean over `scores` where it is defined, with its interval (None: nowhere)."""
    pairs = [(s.key, v) for s in scores if (v := metric(s)) is not None]
    if not pairs:
        return None
    return bootstrap_ci([v for _, v in pairs], [group(k) for k, _ in pairs])


def of(scores: list[Score], condition: str) -> list[Score]:
    return [s for s in scores if s.condition == condition]


def summary(scores: list[Score], condition: str) -> dict[str, Interval | None]:
    """Each metric over every scored tag of the condition."""
    mine = of(scores, condition)
    return {name: interval(mine, metric) for name, metric in METRICS.items()}


def leakage_matrix(scores: list[Score], condition: str) -> dict[str, dict[str, Interval | None]]:
    """Row: the reference whose tag's region is looked at; column: the reference it is compared
    with (every reference of the suite, whether the request had it or not: those it did not are
    the baseline of looking alike by chance), and its own reference outside the region."""
    mine = of(scores, condition)
    matrix: dict[str, dict[str, Interval | None]] = {}
    for row in REFERENCE_KEYS:
        rows = [s for s in mine if s.ref == row]
        cells = {col: interval(rows, lambda s, c=col: s.inside[c]) for col in REFERENCE_KEYS}
        cells[OUTSIDE] = interval(rows, METRICS[OUTSIDE])
        matrix[row] = cells
    return matrix


def paired(scores: list[Score], condition: str, baseline: str) -> dict[str, Interval | None]:
    """Per metric, the condition minus the baseline, tag by tag (same case, seed and tag: the same
    region), with its interval."""
    out: dict[str, Interval | None] = {}
    for name, metric in METRICS.items():
        a = {s.key: v for s in of(scores, condition) if (v := metric(s)) is not None}
        b = {s.key: v for s in of(scores, baseline) if (v := metric(s)) is not None}
        out[name] = paired_difference(a, b, group) if a and b else None
    return out
