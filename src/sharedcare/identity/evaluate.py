"""How good the master patient index is, against ground truth: pairwise precision and recall, the
people it wrongly merged (the error that harms: one person shown another's record) and the links it
missed, with the worst cases named so a reviewer can look at them.

Counting is by pairs of source records, computed from cluster sizes (no pair is materialised), so it
runs on a million records in memory proportional to the number of records.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (source_org, source_id)


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


@dataclass
class Evaluation:
    records: int
    predicted_pairs: int
    true_pairs: int
    true_positive_pairs: int
    falsely_merged_persons: int
    missed_link_pairs: int
    not_in_truth: int
    worst_merges: list[dict[str, Any]] = field(default_factory=list)
    worst_splits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.true_positive_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.true_positive_pairs / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "predicted_pairs": self.predicted_pairs, "true_pairs": self.true_pairs,
                "true_positive_pairs": self.true_positive_pairs,
                "falsely_merged_persons": self.falsely_merged_persons, "missed_link_pairs": self.missed_link_pairs,
                "records_not_in_truth": self.not_in_truth, "worst_merges": self.worst_merges,
                "worst_splits": self.worst_splits}


def evaluate(predicted: Mapping[Key, str], truth: Mapping[Key, str], worst: int = 10) -> Evaluation:
    """Compare the MPI's person for each source record with the true person key.

    Only records present in both count; records the MPI holds but the truth does not are reported."""
    common = [key for key in predicted if key in truth]
    by_person: dict[str, list[Key]] = defaultdict(list)
    by_truth: dict[str, list[Key]] = defaultdict(list)
    joint: Counter[tuple[str, str]] = Counter()
    for key in common:
        by_person[predicted[key]].append(key)
        by_truth[truth[key]].append(key)
        joint[(predicted[key], truth[key])] += 1
    predicted_pairs = sum(_pairs(len(keys)) for keys in by_person.values())
    true_pairs = sum(_pairs(len(keys)) for keys in by_truth.values())
    true_positive = sum(_pairs(n) for n in joint.values())
    merges: list[dict[str, Any]] = []
    for person, keys in by_person.items():
        people = Counter(truth[k] for k in keys)
        if len(people) > 1:
            wrong_pairs = _pairs(len(keys)) - sum(_pairs(n) for n in people.values())
            merges.append({"person_id": person, "true_people": sorted(people), "wrong_pairs": wrong_pairs,
                           "records": sorted(f"{org}/{sid}" for org, sid in keys)})
    splits: list[dict[str, Any]] = []
    for person_key, keys in by_truth.items():
        persons = Counter(predicted[k] for k in keys)
        if len(persons) > 1:
            missed = _pairs(len(keys)) - sum(_pairs(n) for n in persons.values())
            splits.append({"person_key": person_key, "split_into": len(persons), "missed_pairs": missed,
                           "records": sorted(f"{org}/{sid}" for org, sid in keys)})
    merges.sort(key=lambda m: -int(m["wrong_pairs"]))
    splits.sort(key=lambda s: -int(s["missed_pairs"]))
    return Evaluation(records=len(common), predicted_pairs=predicted_pairs, true_pairs=true_pairs,
                      true_positive_pairs=true_positive, falsely_merged_persons=len(merges),
                      missed_link_pairs=true_pairs - true_positive, not_in_truth=len(predicted) - len(common),
                      worst_merges=merges[:worst], worst_splits=splits[:worst])
