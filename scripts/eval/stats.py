"""The evaluation's statistics: means with percentile-bootstrap confidence intervals, resampling
whole images (the tags of one image are not independent), and paired differences between two
conditions. Numpy only: no torch."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean, its confidence interval, and how many values (and groups) it is over."""

    mean: float
    low: float
    high: float
    n: int
    groups: int

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def bootstrap_ci(
    values: Sequence[float],
    groups: Sequence[Hashable] | None = None,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """The mean of `values` and its percentile-bootstrap interval. With `groups` (one per value),
    whole groups are resampled with replacement (a cluster bootstrap), so that values that move
    together, such as the tags of one image, count as one draw and not as several."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty list of numbers, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_ci got a value that is not a finite number")
    if groups is None:
        labels = np.arange(x.size)
    else:
        if len(groups) != x.size:
            raise ValueError(f"{len(groups)} groups for {x.size} values: one group per value")
        # Numbered in order of first appearance (not by hash, which changes between processes).
        index: dict[Hashable, int] = {}
        labels = np.asarray([index.setdefault(g, len(index)) for g in groups])
    count = int(labels.max()) + 1
    sums = np.bincount(labels, weights=x, minlength=count)
    sizes = np.bincount(labels, minlength=count).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, count, size=(resamples, count))
    # The mean of the values in the drawn groups (each group as often as it was drawn).
    means = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(x.mean()), float(low), float(high), int(x.size), count)


Key = tuple


def paired_difference(
    a: Mapping[Key, float],
    b: Mapping[Key, float],
    group: Callable[[Key], Hashable] | None = None,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """The mean of a[k] - b[k] over the keys both share, with its bootstrap interval (groups from
    `group(key)`): each value is compared with its own pair (same prompt, seed and tag), so that
    what differs between prompts cancels. Both must hold the same keys."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b), key=str), sorted(set(b) - set(a), key=str)
        raise ValueError(f"unpaired keys: only in the first {only_a[:5]}, only in the second {only_b[:5]}")
    keys = sorted(a, key=str)
    diffs = [a[k] - b[k] for k in keys]
    return bootstrap_ci(diffs, [group(k) for k in keys] if group else None, resamples, level, seed)
