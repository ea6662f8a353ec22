"""Probabilistic matching of source patient records with Splink (Fellegi-Sunter, on DuckDB).

A batch relink trains the model on the ICS's own records (u by random sampling, m by expectation
maximisation under two blocking rules), scores the candidate pairs the blocking rules produce, and
clusters them at the link threshold. Two safety rules apply on top of the model, because a false link
shows one person another's record: records whose valid NHS numbers differ are never in one person, and
a cluster that would join two NHS numbers is split, its records without a number held for review.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import splink.comparison_library as cl
from splink import Linker, SettingsCreator, block_on
from splink.backends.duckdb import DuckDBAPI

LINK_THRESHOLD = 0.999
REVIEW_THRESHOLD = 0.9
MODEL_VERSION = "2026.11-1"


@dataclass(frozen=True)
class MatchRecord:
    """The fields matching uses, one per source patient record."""

    record_id: int
    source_org: str
    nhs_number: str | None
    given: str | None
    family: str | None
    birth_date: str | None
    sex: str | None
    postcode: str | None


@dataclass(frozen=True)
class ReviewPair:
    """A pair between the review and link thresholds, with the evidence a reviewer reads: each
    comparison's level and its match weight (log2 Bayes factor), the waterfall of the decision."""

    record_a: int
    record_b: int
    probability: float
    evidence: dict[str, Any]


@dataclass
class Clustering:
    """Which records belong together, how sure the model was, and what needs a person to look."""

    cluster_of: dict[int, int]
    probability: dict[int, float]
    review_pairs: list[ReviewPair] = field(default_factory=list)
    held_for_review: set[int] = field(default_factory=set)
    model: dict[str, Any] = field(default_factory=dict)


def _settings() -> SettingsCreator:
    return SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.ExactMatch("nhs_number"),
            cl.ForenameSurnameComparison("first_name", "surname"),
            cl.DateOfBirthComparison("dob", input_is_string=True),
            cl.PostcodeComparison("postcode"),
            cl.ExactMatch("sex"),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("nhs_number"),
            block_on("dob"),
            block_on("surname", "substr(postcode, 1, 3)"),
            block_on("first_name", "postcode"),
        ],
        retain_intermediate_calculation_columns=True,
    )


def _table(records: list[MatchRecord]) -> pa.Table:
    return pa.Table.from_pylist([{
        "unique_id": r.record_id, "nhs_number": r.nhs_number,
        "first_name": (r.given or "").strip().lower() or None, "surname": (r.family or "").strip().lower() or None,
        "dob": r.birth_date, "sex": r.sex if r.sex in ("male", "female") else None,
        "postcode": " ".join((r.postcode or "").upper().split()) or None,
    } for r in records], schema=pa.schema([
        ("unique_id", pa.int64()), ("nhs_number", pa.string()), ("first_name", pa.string()),
        ("surname", pa.string()), ("dob", pa.string()), ("sex", pa.string()), ("postcode", pa.string()),
    ]))


def cluster(records: list[MatchRecord], decided_same: set[tuple[int, int]] | None = None,
            decided_different: set[tuple[int, int]] | None = None) -> Clustering:
    """Train on these records, score candidate pairs and cluster them, with the NHS-number safety rules.

    Reviewers' decisions win over the model: pairs decided the same person are linked, pairs decided
    different people are never linked directly."""
    decided_same, decided_different = decided_same or set(), decided_different or set()
    if len(records) < 2:
        return Clustering({r.record_id: r.record_id for r in records}, {r.record_id: 1.0 for r in records})
    api = DuckDBAPI(duckdb.connect())
    linker = Linker(api.register(_table(records), table_name="patient_records"), _settings(),
                    log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match([block_on("nhs_number")], recall=0.9)
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("surname", "substr(postcode, 1, 3)"))
    scored = linker.inference.predict(threshold_match_probability=REVIEW_THRESHOLD).as_duckdbpyrelation()
    evidence_columns = [c for c in scored.columns if c.startswith(("gamma_", "bf_"))]
    rows = scored.select(", ".join(["unique_id_l", "unique_id_r", "match_probability", *evidence_columns])).fetchall()
    numbers = {r.record_id: r.nhs_number for r in records}
    links = [(a, b, p) for a, b, p, *_ in rows
             if (p >= LINK_THRESHOLD or (min(a, b), max(a, b)) in decided_same)
             and (min(a, b), max(a, b)) not in decided_different and not _numbers_differ(numbers, a, b)]
    links += [(a, b, 1.0) for a, b in decided_same if not _numbers_differ(numbers, a, b)]
    result = _components(records, links, numbers)
    result.review_pairs = [ReviewPair(min(a, b), max(a, b), p, _evidence(evidence_columns, values))
                           for a, b, p, *values in rows
                           if p < LINK_THRESHOLD and result.cluster_of[a] != result.cluster_of[b]]
    result.model = json.loads(json.dumps(linker.misc.save_model_to_json(overwrite=True)))
    result.model["sharedcare_model_version"] = MODEL_VERSION
    return result


def _evidence(columns: list[str], values: list[Any]) -> dict[str, Any]:
    """Per comparison: the level the pair reached and its match weight (log2 of the Bayes factor)."""
    out: dict[str, Any] = {}
    for name, value in zip(columns, values, strict=True):
        kind, _, comparison = name.partition("_")
        entry = out.setdefault(comparison, {})
        if kind == "gamma":
            entry["level"] = int(value) if value is not None else None
        elif value:
            entry["match_weight"] = round(math.log2(float(value)), 2)
    return out


def _numbers_differ(numbers: dict[int, str | None], a: int, b: int) -> bool:
    return bool(numbers[a] and numbers[b] and numbers[a] != numbers[b])


def _components(records: list[MatchRecord], links: list[tuple[int, int, float]],
                numbers: dict[int, str | None]) -> Clustering:
    """Connected components of the links (union-find), then split any that would join two NHS numbers."""
    parent = {r.record_id: r.record_id for r in records}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    best: dict[int, float] = defaultdict(float)
    for a, b, p in links:
        parent[find(a)] = find(b)
        best[a], best[b] = max(best[a], p), max(best[b], p)
    members: dict[int, list[int]] = defaultdict(list)
    for r in records:
        members[find(r.record_id)].append(r.record_id)
    cluster_of: dict[int, int] = {}
    held: set[int] = set()
    for root, ids in members.items():
        distinct = {numbers[i] for i in ids if numbers[i]}
        if len(distinct) <= 1:
            cluster_of.update({i: root for i in ids})
            continue
        by_number: dict[str, int] = {}
        for i in ids:  # split by NHS number; records without one stand alone, held for review
            number = numbers[i]
            if number:
                cluster_of[i] = by_number.setdefault(number, i)
            else:
                cluster_of[i] = i
                held.add(i)
    probability = {i: (best[i] if i in best and i not in held else 1.0) for i in cluster_of}
    return Clustering(cluster_of, probability, held_for_review=held)
