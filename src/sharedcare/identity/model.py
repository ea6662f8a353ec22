"""The trained matching model (Splink's JSON: the prior and each comparison level's m and u) and the
Fellegi-Sunter arithmetic on it, so a pair can be scored, and explained, without Splink.

A pair's match weight is the prior's log-odds plus, per comparison, log2(m/u) of the level it reached;
its probability is 2^w / (1 + 2^w). That is what Splink computes in SQL; `tests/identity` checks
the two agree. Each level's weight is saved with the model as Splink's predict takes it
(`sharedcare_match_weights`, written at training): where training left a level's m or u unestimated,
Splink scores it with its default (about -7 for "name different" in the shipped model), and real time
must score a pair as the relink does. The evidence kept for each link and review item is that sum written out: the
waterfall a reviewer reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

from sharedcare.identity.compare import COMPARISONS, Comparison, Features, given_names_conflict, levels

LINK_THRESHOLD = 0.999
REVIEW_THRESHOLD = 0.9
REVIEW_WEIGHT = math.log2(REVIEW_THRESHOLD / (1 - REVIEW_THRESHOLD))  # the match weight of that probability
MODEL_VERSION = "2026.12-3"  # the comparisons (compare.py) and saved weights; a model of another is refused
DEFAULT_MODEL = "default_model.json"  # trained on a synthetic ICS, used until the first relink


class ModelError(ValueError):
    """A saved model that does not fit the comparisons this code scores."""


@dataclass(frozen=True)
class Score:
    probability: float
    match_weight: float
    levels: dict[str, int]
    never_link: list[str]  # comparisons whose level (or, for the name, given names: `score`) rules out a link

    @property
    def outcome(self) -> str:
        """link, review or no-link by threshold; a safety level caps a link at review."""
        if self.probability >= LINK_THRESHOLD and not self.never_link:
            return "link"
        return "review" if self.probability >= REVIEW_THRESHOLD else "no-link"


class Model:
    """Match weights per comparison level, read from a Splink model."""

    def __init__(self, splink_json: dict[str, Any]):
        version = splink_json.get("sharedcare_model_version")
        if version != MODEL_VERSION:
            raise ModelError(f"model version {version!r} does not fit these comparisons ({MODEL_VERSION})")
        self.json = splink_json
        self.version = str(version)
        self.trained_on = int(splink_json.get("sharedcare_trained_on", 0))
        prior = float(splink_json["probability_two_random_records_match"])
        self.prior_weight = math.log2(prior / (1 - prior))
        self.weights: dict[str, list[float]] = {}
        self.labels: dict[str, list[str]] = {}
        by_name = {c["output_column_name"]: c for c in splink_json["comparisons"]}
        weights = splink_json.get("sharedcare_match_weights") or {}
        for comparison in COMPARISONS:
            saved = by_name.get(comparison.name)
            if saved is None or len(saved["comparison_levels"]) != len(comparison.levels):
                raise ModelError(f"model has no comparison '{comparison.name}' with {len(comparison.levels)} levels")
            if len(weights.get(comparison.name) or ()) != len(comparison.levels):
                raise ModelError(f"model has no saved weight for each level of '{comparison.name}'")
            self.weights[comparison.name] = [float(w) for w in weights[comparison.name]]
            self.labels[comparison.name] = [lv.label for lv in comparison.levels]

    def score(self, a: Features, b: Features, prior_shift: float = 0.0) -> Score:
        """The pair's score; the name rules out a link also when the given names differ element by element
        (`compare.given_names_conflict`: "Thị Hằng" and "Thị Hương" meet on Thị at a level that links)."""
        score = self.score_levels(levels(a, b), prior_shift)
        if "name" not in score.never_link and given_names_conflict(a, b):
            return replace(score, never_link=[*score.never_link, "name"])
        return score

    def score_levels(self, found: dict[str, int], prior_shift: float = 0.0) -> Score:
        weight = self.prior_weight + prior_shift + sum(self.weights[name][i] for name, i in found.items())
        return Score(_probability(weight), weight, found, self._never_link(found))

    def weight(self, comparison: Comparison, a: Features, b: Features) -> float:
        """The match weight this one comparison gives the pair."""
        return self.weights[comparison.name][comparison.level(a, b)]

    def ceiling(self, a: Features, comparisons: Iterable[Comparison]) -> float:
        """The most these comparisons can add to the weight of any pair with `a`: nothing where `a` lacks
        the value (the pair is at 'missing' whatever the other record holds), else their best level."""
        total = 0.0
        for comparison in comparisons:
            null = comparison.levels[0]
            if not (null.null and null.test(a, a)):
                total += max(self.weights[comparison.name])
        return total

    def _never_link(self, found: dict[str, int]) -> list[str]:
        return [c.name for c in COMPARISONS if self.labels[c.name][found[c.name]] in c.never_link]

    def level_of_gamma(self, comparison: str, gamma: int) -> int:
        """Splink numbers a comparison's levels -1 (missing) then n-2 .. 0 from most specific to 'else'."""
        return 0 if gamma < 0 else len(self.weights[comparison]) - 1 - gamma

    def prior_shift(self, index_size: int) -> float:
        """Real-time prior for an index of `index_size` records: the chance that a random stored record
        is the incoming person falls as 1/size, so an index larger than the training set lowers the
        prior by log2(size / trained_on). Never raised above what training estimated."""
        if not self.trained_on or index_size <= self.trained_on:
            return 0.0
        return -math.log2(index_size / self.trained_on)

    def evidence(self, found: dict[str, int], prior_shift: float = 0.0) -> dict[str, Any]:
        """The waterfall: the prior, then each comparison's level and match weight, then the total."""
        steps = [{"comparison": name, "level": self.labels[name][i], "match_weight": round(self.weights[name][i], 2)}
                 for name, i in found.items()]
        prior = self.prior_weight + prior_shift
        total = prior + sum(self.weights[name][i] for name, i in found.items())
        return {"model_version": self.version, "prior_weight": round(prior, 2), "comparisons": steps,
                "match_weight": round(total, 2), "match_probability": round(_probability(total), 6),
                "never_link": self._never_link(found)}


def _probability(weight: float) -> float:
    if weight > 60:
        return 1.0
    odds = 2.0 ** weight
    return odds / (1 + odds)


@cache
def default_model() -> Model:
    text = resources.files("sharedcare.identity").joinpath(DEFAULT_MODEL).read_text(encoding="utf-8")
    return Model(json.loads(text))
