"""Paired comparisons over seeds: is a method better than a baseline, or level with it?

Seed-to-seed spread is shared by every method trained on the same seed's data from the same
start, so comparing means ± std hides a gain that holds on every seed. The comparison here is
paired: per seed, the method's metric minus the baseline's on that seed; then the mean of
those differences, its standard error (sample std / sqrt(n)), and how many seeds were positive.

The claim rule the demo and the README use: a method **beats** the baseline when the mean
difference is above twice its standard error *and* every seed is positive; it **trails** when
the mirror image holds; otherwise the two are **level**. With one seed there is no standard
error and nothing is claimed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Paired", "paired"]


@dataclass(frozen=True)
class Paired:
    """A method's per-seed differences from a baseline and what they allow one to say."""

    diffs: dict[int, float]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs.values())

    @property
    def se(self) -> float:
        """Standard error of the mean difference (NaN with fewer than two seeds)."""
        if self.n < 2:
            return math.nan
        return statistics.stdev(self.diffs.values()) / math.sqrt(self.n)

    @property
    def positive(self) -> int:
        """Seeds on which the method scored strictly above the baseline."""
        return sum(d > 0 for d in self.diffs.values())

    @property
    def negative(self) -> int:
        return sum(d < 0 for d in self.diffs.values())

    @property
    def verdict(self) -> str:
        """``beats``, ``trails`` or ``level`` under the rule of the module docstring."""
        if self.n < 2:
            return "level"
        if self.mean > 2 * self.se and self.positive == self.n:
            return "beats"
        if self.mean < -2 * self.se and self.negative == self.n:
            return "trails"
        return "level"

    def to_dict(self) -> dict:
        return {"diffs": {str(k): v for k, v in self.diffs.items()}, "mean": self.mean, "se": self.se,
                "positive": self.positive, "n": self.n, "verdict": self.verdict}


def paired(method: Mapping[int, float], baseline: Mapping[int, float]) -> Paired:
    """Per-seed ``method - baseline`` over the seeds both have; raises when they share none."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        raise ValueError(f"no common seeds: method has {sorted(method)}, baseline {sorted(baseline)}")
    return Paired({s: float(method[s]) - float(baseline[s]) for s in seeds})
