"""Batch matching of every source patient record with Splink (Fellegi-Sunter, on DuckDB).

A relink trains the model on the ICS's own records (u by random sampling, m by expectation
maximisation under blocking rules, the prior from NHS-number agreement, its recall measured against
name and birth date agreement), scores the candidate pairs the
blocking rules produce and clusters them at the link threshold. The comparisons are those of
`compare.py`, fitted to UK data. Safety rules apply on top of the model, because a false link shows
one person another's record: records whose valid NHS numbers differ are never in one person; a pair
whose given names disagree (twins, siblings) is never linked automatically, only reviewed, unless its
NHS number, surname and date of birth all agree (then it is linked, as ingest links on the NHS number,
and put on the review list with that reason); nor is a pair neither of whose records has a given name
(newborn twins before naming), unless a valid NHS number agrees; these rules and a reviewer's separation
hold across a third record without a given name too (`_components`); and a cluster that would join two
NHS numbers is split, its records without a number held for review.

Splink trains the model; the candidate pairs are scored here, in one DuckDB query built from the same
blocking rules and the same comparison SQL, because Splink's predict computes every comparison of every
candidate pair: at a million records that is over a hundred million pairs (common names, shared birth
dates), nearly all far below review. The query adds the cheap comparisons first and drops a pair as soon
as even the best levels of those left could not lift it to review, and drops pairs the NHS-number rule
keeps apart, so only pairs a person or the links need reach Python. DuckDB's memory is capped; beyond
the cap it spills to a temporary directory.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import splink.comparison_library as cl
from splink import Linker, SettingsCreator, block_on
from splink.backends.duckdb import DuckDBAPI
from splink.internals.blocking_rule_creator import BlockingRuleCreator
from splink.internals.blocking_rule_creator_utils import to_blocking_rule_creator
from splink.internals.constants import LEVEL_NOT_OBSERVED_TEXT
from splink.internals.misc import prob_to_match_weight

from sharedcare.identity.compare import (
    COMPARISONS,
    GIVEN_NAMES_CONFLICT,
    INT_COLUMNS,
    LIST_COLUMNS,
    NEITHER_NAMED,
    NHS_NUMBER_OUTWEIGHS_GIVEN_NAME,
    RULE_COLUMNS,
    Comparison,
    Features,
    MatchRecord,
    features,
    given_names_conflict,
    given_text,
    names_keep_apart,
    neither_named,
    nhs_number_outweighs_given_name,
    numbers_keep_apart,
)
from sharedcare.identity.model import LINK_THRESHOLD, MODEL_VERSION, REVIEW_THRESHOLD, REVIEW_WEIGHT, Model
from sharedcare.identity.nhs_number import is_valid

__all__ = ["MatchRecord", "Clustering", "ReviewPair", "cluster", "train"]

# Candidate pairs: same NHS number, same date of birth or transposed, the same full name (the key
# real-time matching blocks on too: a wrong or missing birth date must not hide a pair), surname in
# the same postcode district, given name at the same postcode, or an email in common.
BLOCKING: list[BlockingRuleCreator | dict[str, Any]] = [
    block_on("nhs_number"),
    block_on("dob"),
    {"blocking_rule": "l.dob_transposed = r.dob", "sql_dialect": "duckdb"},
    block_on("given", "family"),
    block_on("family", "district"),
    block_on("given", "postcode"),
    block_on("email"),
]

MIN_TRAINING_RECORDS = 1000
# EM sessions, each on pairs that are nearly all one person (so EM does not learn households as matches);
# a session estimates the comparisons its blocking columns leave free, so together they cover every
# comparison: birth date and postcode (names and the rest), full name and birth date (address), full
# name and postcode district (birth date). Each lists rules in order of preference: the first with any
# pairs is used (data without UK postcodes fall back). The full name alone was ~100 million pairs at a
# million records, most of the relink's time; these narrower blocks are a small share of that.
EM_BLOCKING: list[tuple[tuple[str, ...], ...]] = [
    (("dob", "postcode"), ("dob",)),
    (("given", "family", "dob"), ("given", "family")),
    (("given", "family", "district"), ("given", "family")),
]

# DuckDB's memory for training and scoring; it spills to disk beyond this (the process also holds the
# records and their features, about 2 GB at a million records).
MEMORY_LIMIT = "3GB"
# Scoring order: comparisons of plain values first, then those of lists, then names (Jaro-Winkler).
STAGES: list[tuple[str, ...]] = [("nhs_number", "dob", "sex", "email"), ("address", "phone"), ("name",)]
SLACK = 1e-6  # the query keeps pairs this far below review; Python decides on the exact weight


# The least m-probability a trained level keeps. EM drives a level's m towards 0 when its training pairs
# hold (nearly) no true match at that level: the model shipped until 2026.12-3 gave "same postcode
# district" m 5e-55 (-176.46) and phone "different" 2e-14 (-45.91); on a 10,000-person synthetic ICS,
# name "different" 5e-11 (-34.1) and phone "different" 2e-5 (-16.0). A level people reach in ordinary
# life (a move within the district, a new number) then weighs as a veto no agreement outweighs. One true
# pair in a thousand is far rarer than moving or changing number is in a real ICS, and still weighs a
# "different" level at about -10, as strongly against a match as the strongest estimated from pairs EM
# did see (birth date, -9.3). Splink has no bound (a level's m is estimated, or fixed by
# `fix_m_probability`, which would keep EM from estimating it at all).
M_PROBABILITY_FLOOR = 1e-3

PRIOR_RECALL_GUESS = 0.9  # the recall assumed for the prior's rule when the data cannot measure it
MIN_PRIOR_OVERLAP = 20  # pairs agreeing on both rules needed to measure the NHS-number rule's recall


def _agreeing_pairs(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> int:
    """How many pairs of records agree on all these columns (none missing)."""
    counts = Counter(key for key in (tuple(row[c] for c in columns) for row in rows) if None not in key)
    return sum(n * (n - 1) // 2 for n in counts.values())


def prior_rule(rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], float]:
    """The rule whose pairs are sure to be one person, and its recall, for Splink's estimate of the prior
    (matches = pairs the rule finds / its recall).

    The rule is the same NHS number. Its recall is not a constant: it is the share of true pairs in which
    both records carry the number, and feeds that lack it (A&E, ambulance, social care) are the ones that
    need matching. So it is measured against a second rule whose misses are independent of it, the same
    full name and birth date: the share of name-and-birth-date pairs that also share an NHS number is the
    NHS-number rule's recall (capture-recapture), and the prior becomes pairs(NHS) x pairs(name and birth
    date) / pairs(both). Only when too few pairs meet both rules is the recall guessed; data without NHS
    numbers use the name-and-birth-date rule with the guess."""
    name_dob = ("given", "family", "dob")
    numbered = _agreeing_pairs(rows, ("nhs_number",))
    if not numbered:
        return name_dob, PRIOR_RECALL_GUESS
    both = _agreeing_pairs(rows, ("nhs_number", *name_dob))
    if both < MIN_PRIOR_OVERLAP:
        return ("nhs_number",), PRIOR_RECALL_GUESS
    return ("nhs_number",), min(1.0, both / _agreeing_pairs(rows, name_dob))


def _has_pairs(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> bool:
    """Whether any two records agree on all these columns (Splink's EM refuses an empty block, and a
    refused session leaves the linker without the comparisons it set aside)."""
    seen: set[tuple[Any, ...]] = set()
    for row in rows:
        key = tuple(row[c] for c in columns)
        if None in key:
            continue
        if key in seen:
            return True
        seen.add(key)
    return False


@dataclass(frozen=True)
class ReviewPair:
    """A pair for a person to look at, with its waterfall (see `Model.evidence`): one the model could not
    settle, or (`linked`) one linked on its NHS number although the given names differ."""

    record_a: int
    record_b: int
    probability: float
    evidence: dict[str, Any]
    linked: bool = False


@dataclass
class Clustering:
    """Which records belong together, how sure the model was and why, and what needs a person to look."""

    cluster_of: dict[int, int]
    probability: dict[int, float]
    evidence: dict[int, dict[str, Any]] = field(default_factory=dict)  # record -> its strongest link's waterfall
    review_pairs: list[ReviewPair] = field(default_factory=list)
    held_for_review: set[int] = field(default_factory=set)
    torn: set[int] = field(default_factory=set)  # of those, records linked to two records kept apart
    model: dict[str, Any] = field(default_factory=dict)
    trained: bool = False


def _settings() -> SettingsCreator:
    return SettingsCreator(
        link_type="dedupe_only",
        comparisons=[cl.CustomComparison(**c.splink()) for c in COMPARISONS],
        blocking_rules_to_generate_predictions=BLOCKING,
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,  # training needs only the levels; EM would carry every column per pair
    )


def table(rows: list[Features]) -> pa.Table:
    """The feature table Splink reads (one row per source record)."""
    schema = pa.schema([(name, pa.list_(pa.string()) if name in LIST_COLUMNS else
                         pa.int64() if name in INT_COLUMNS else pa.string()) for name in rows[0]
                        if name not in RULE_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


@contextmanager
def _database() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB whose memory is capped, spilling to a temporary directory removed after."""
    with tempfile.TemporaryDirectory(prefix="sharedcare-relink-") as spill:
        con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill})
        try:
            yield con
        finally:
            con.close()


def _linker(records: list[MatchRecord], model: dict[str, Any] | None = None,
            con: duckdb.DuckDBPyConnection | None = None, data: pa.Table | None = None) -> Linker:
    api = DuckDBAPI(con or duckdb.connect())
    settings = {k: v for k, v in model.items() if not k.startswith("sharedcare_")} if model else _settings()
    data = data if data is not None else table([features(r) for r in records])
    return Linker(api.register(data, table_name="patient_records"), settings, log_level=logging.ERROR)


def train(records: list[MatchRecord], rows: list[Features] | None = None,
          con: duckdb.DuckDBPyConnection | None = None) -> tuple[Linker, dict[str, Any]]:
    """Estimate the model's parameters from these records (`rows`: their features, when already made);
    return the linker and the model's JSON."""
    rows = rows if rows is not None else [features(r) for r in records]
    linker = _linker(records, con=con, data=table(rows))
    columns, recall = prior_rule(rows)
    linker.training.estimate_probability_two_random_records_match([block_on(*columns)], recall=recall)
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6, seed=1)
    for choices in EM_BLOCKING:
        usable = next((c for c in choices if _has_pairs(rows, c)), choices[-1])
        # No term-frequency adjustments: EM can iterate over the counts of each pattern of levels instead of
        # every pair (the same estimates; the same-name block is ~100 million pairs at a million records).
        linker.training.estimate_parameters_using_expectation_maximisation(
            block_on(*usable), estimate_without_term_frequencies=True)
    bound_m_probabilities(linker)
    model = json.loads(json.dumps(linker.misc.save_model_to_json(overwrite=True)))
    model["sharedcare_model_version"] = MODEL_VERSION
    model["sharedcare_trained_on"] = len(records)
    model["sharedcare_match_weights"] = Weights.of(linker).levels  # what real time scores with (model.py)
    return linker, model


def bound_m_probabilities(linker: Linker) -> None:
    """Make the trained levels sound before the model is saved: every trained m-probability at least
    `M_PROBABILITY_FLOOR`, and a level of partial agreement (any but a comparison's last, "different")
    never weighing less than "different" (agreeing in part is never evidence against more than not
    agreeing), a level EM did not observe included. Set on the linker, so the relink, the saved model and
    real time score alike."""
    for comparison in linker._settings_obj.comparisons:
        levels = [level for level in comparison.comparison_levels if not level.is_null_level]
        for level in levels:
            # a level EM never saw among the matches is "not observed", which Splink scores as m 1e-6 (a veto)
            trained = level._m_is_trained or level._m_probability == LEVEL_NOT_OBSERVED_TEXT
            if trained and (level.m_probability or 0.0) < M_PROBABILITY_FLOOR:
                level.m_probability = M_PROBABILITY_FLOOR
        different = levels[-1]._match_weight
        for level in levels[:-1]:
            weight, u = level._match_weight, level.u_probability
            if different is not None and weight is not None and u is not None and weight < different:
                level.m_probability = min(1.0, u * 2.0 ** different)  # the same m/u as "different"


def trained_model(records: list[MatchRecord]) -> dict[str, Any]:
    """The model's JSON trained on these records (`train`), for `cluster` to score with: a relink trains
    (the slow part, minutes at region scale) before it holds the matching lock, and clusters under it."""
    with _database() as con:
        return train(records, None, con)[1]


def cluster(records: list[MatchRecord], decided_same: set[tuple[int, int]] | None = None,
            decided_different: set[tuple[int, int]] | None = None,
            fallback: dict[str, Any] | None = None, trained_on: dict[str, Any] | None = None) -> Clustering:
    """Train on these records, score candidate pairs and cluster them, under the safety rules.

    Fewer than MIN_TRAINING_RECORDS are too few to estimate anything from: they are scored with the
    `fallback` model (the one in use) instead. `trained_on`: a model already trained on (nearly) these
    records (`trained_model`), scored with as if trained here. Reviewers' decisions win over the model:
    pairs decided the same person are linked, pairs decided different people are never linked, directly
    or through another record (`_components`)."""
    decided_same, decided_different = ({(min(a, b), max(a, b)) for a, b in pairs or ()}
                                       for pairs in (decided_same, decided_different))
    if len(records) < 2:
        return Clustering({r.record_id: r.record_id for r in records}, {r.record_id: 1.0 for r in records})
    trained = trained_on is not None or fallback is None or len(records) >= MIN_TRAINING_RECORDS
    rows = [features(r) for r in records]
    with _database() as con:
        saved = trained_on if trained_on is not None else None if trained else fallback
        if saved is not None:
            linker = _linker(records, saved, con, table(rows))
        else:
            linker, saved = train(records, rows, con)
        model, weights = Model(saved), Weights.of(linker)
        scored = score_pairs(con, rows, weights)
        del rows, linker
    names = [c.name for c in COMPARISONS]
    numbers = {r.record_id: r.nhs_number for r in records}
    by_id = {r.record_id: r for r in records}
    unnamed = {r.record_id for r in records if given_text(r.given) is None}
    prepared: dict[int, Features] = {}

    def features_of(record_id: int) -> Features:
        if record_id not in prepared:
            prepared[record_id] = features(by_id[record_id])
        return prepared[record_id]

    scores: dict[tuple[int, ...], tuple[float, list[str]]] = {}
    links: list[tuple[int, int, float]] = []
    unsure: list[tuple[int, int, float, tuple[int, ...]]] = []
    discrepant: list[tuple[int, int, float, tuple[int, ...]]] = []  # linked on the NHS number, names differ
    found_of: dict[tuple[int, int], tuple[int, ...]] = {}
    conflicting: set[tuple[int, int]] = set()  # held by `given_names_conflict`, not by their levels
    columns = [scored["unique_id_l"].tolist(), scored["unique_id_r"].tolist(),
               *(scored[f"level_{name}"].tolist() for name in names)]
    for a, b, *found in zip(*columns, strict=True):
        key = tuple(found)
        if key not in scores:
            scores[key] = weights.probability(key), model.score_levels(dict(zip(names, key, strict=True))).never_link
        p, never_link = scores[key]
        if p < REVIEW_THRESHOLD:
            continue  # within the query's slack
        pair = (min(a, b), max(a, b))
        found_of[pair] = key
        if pair in decided_different or _numbers_differ(numbers, a, b):
            continue
        if p >= LINK_THRESHOLD and "name" not in never_link and given_names_conflict(features_of(a), features_of(b)):
            never_link = [*never_link, "name"]  # the given names differ element by element, as `Model.score` reads
            conflicting.add(pair)
        if pair in decided_same or (p >= LINK_THRESHOLD and not never_link and not (
                a in unnamed and b in unnamed and neither_named(features_of(a), features_of(b)))):
            links.append((a, b, p))
        elif never_link == ["name"] and nhs_number_outweighs_given_name(features_of(a), features_of(b)):
            links.append((a, b, p))  # as ingest links on the NHS number; kept on the review list
            discrepant.append((a, b, p, key))
        else:
            unsure.append((a, b, p, key))
    links += [(a, b, 1.0) for a, b in decided_same if not _numbers_differ(numbers, a, b)]

    def elements_differ(x: int, y: int) -> bool:
        fx, fy = features_of(x), features_of(y)
        return given_names_conflict(fx, fy) and not nhs_number_outweighs_given_name(fx, fy)

    result, refused = _components(records, links, numbers, Apart(
        decided_different, decided_same, unnamed, lambda x, y: names_keep_apart(features_of(x), features_of(y)),
        elements_differ))
    unsure += [(a, b, p, found_of[pair]) for a, b, p in refused if (pair := (min(a, b), max(a, b))) in found_of]
    bridged = {(min(a, b), max(a, b)) for a, b, _ in refused}
    waterfalls: dict[tuple[int, ...], dict[str, Any]] = {}

    def evidence(key: tuple[int, ...]) -> dict[str, Any]:
        """The waterfall of these levels (made once per distinct set of levels; callers copy it)."""
        if key not in waterfalls:
            waterfalls[key] = model.evidence(dict(zip(names, key, strict=True)))
        return waterfalls[key]

    flagged = {(min(a, b), max(a, b)) for a, b, _, _ in discrepant}
    for a, b, p in links:
        pair = (min(a, b), max(a, b))
        if pair in bridged:
            continue
        pair_levels = found_of.get(pair)
        for record in (a, b):
            if pair_levels and p >= result.probability.get(record, 0.0) - 1e-12 and record not in result.evidence:
                result.evidence[record] = evidence(pair_levels) | {"with_record": b if record == a else a} | (
                    {"discrepancy": NHS_NUMBER_OUTWEIGHS_GIVEN_NAME} if pair in flagged else {})

    def why(a: int, b: int, p: float) -> dict[str, str]:
        """What holds an unsure pair the model would have linked, beyond its levels' own `never_link`."""
        if (min(a, b), max(a, b)) in bridged:
            return {"held": BRIDGE}
        if p >= LINK_THRESHOLD and a in unnamed and b in unnamed and neither_named(features_of(a), features_of(b)):
            return {"held": NEITHER_NAMED}
        if (min(a, b), max(a, b)) in conflicting:
            return {"held": GIVEN_NAMES_CONFLICT}
        return {}

    result.review_pairs = [ReviewPair(min(a, b), max(a, b), p, evidence(key) | why(a, b, p))
                           for a, b, p, key in unsure if result.cluster_of[a] != result.cluster_of[b]]
    result.review_pairs += [ReviewPair(min(a, b), max(a, b), p, evidence(key)
                                       | {"discrepancy": NHS_NUMBER_OUTWEIGHS_GIVEN_NAME}, linked=True)
                            for a, b, p, key in discrepant if result.cluster_of[a] == result.cluster_of[b]]
    result.model, result.trained = saved, trained
    return result


@dataclass(frozen=True)
class Weights:
    """Each comparison level's match weight as Splink's predict computes it, so a relink scores exactly as
    Splink would (where training left a level's m or u unestimated Splink uses its default). Saved with
    the model, so real time and the waterfall (`Model`) score with the same weights."""

    prior: float
    levels: dict[str, list[float]]  # comparison -> weight of each level, in `compare.py`'s order

    @classmethod
    def of(cls, linker: Linker) -> Weights:
        settings = linker._settings_obj
        return cls(prob_to_match_weight(settings._probability_two_random_records_match),
                   {c.output_column_name: [float(level._match_weight) for level in c.comparison_levels]
                    for c in settings.comparisons})

    def probability(self, found: tuple[int, ...]) -> float:
        """Splink's match probability of a pair at these levels (one per comparison, `COMPARISONS`' order)."""
        weight = self.prior + sum(self.levels[c.name][i] for c, i in zip(COMPARISONS, found, strict=True))
        return 1.0 / (1.0 + 2.0 ** -weight) if weight >= 0 else 2.0 ** weight / (1.0 + 2.0 ** weight)


def score_pairs(con: duckdb.DuckDBPyConnection, rows: list[Features], weights: Weights) -> dict[str, Any]:
    """The candidate pairs whose match weight may reach review, as numpy columns: `unique_id_l`,
    `unique_id_r` and `level_<comparison>` for each comparison (see `scoring_sql`)."""
    valid = pa.array([bool(r["nhs_number"]) and is_valid(r["nhs_number"]) for r in rows])
    con.register("records", table(rows).append_column("nhs_valid", valid))
    try:
        return dict(con.sql(scoring_sql(weights)).fetchnumpy())
    finally:
        con.unregister("records")


def scoring_sql(weights: Weights) -> str:
    """One query over the table `records` (the features and `nhs_valid`): every candidate pair of the
    blocking rules (each rule leaves out the pairs of the rules before it, as Splink's predict does), with
    its level on each comparison (index into `compare.py`'s levels, the same SQL Splink runs), for the
    pairs whose match weight reaches review. Comparisons are added in `STAGES`; after each, a pair whose
    weight so far plus the best weight of every comparison still to come falls short of review is
    dropped, so the dearer comparisons run on few pairs. Pairs of two different valid NHS numbers are
    dropped first: `cluster` never links nor reviews them (`numbers_keep_apart`)."""
    by_name = {c.name: c for c in COMPARISONS}
    columns = [name for name in _feature_columns() if name != "unique_id"]
    pick = ", ".join(["l.unique_id AS unique_id_l", "r.unique_id AS unique_id_r",
                      *(f"l.{c} AS {c}_l, r.{c} AS {c}_r" for c in columns)])
    keep_apart = "coalesce(l.nhs_valid AND r.nhs_valid AND l.nhs_number <> r.nhs_number, false)"
    rules = [to_blocking_rule_creator(rule).get_blocking_rule("duckdb").blocking_rule_sql for rule in BLOCKING]
    # The SQL below is made only of the code's own comparison and blocking SQL, column names and numbers.
    blocks = [f"SELECT {pick} FROM records AS l JOIN records AS r ON ({rule}) WHERE l.unique_id < r.unique_id"  # noqa: S608
              + "".join(f" AND NOT coalesce(({r}), false)" for r in rules[:n]) + f" AND NOT {keep_apart}"
              for n, rule in enumerate(rules)]
    sql = "WITH stage0 AS (" + " UNION ALL ".join(blocks) + ")"
    weight = _literal(weights.prior)
    done: list[str] = []
    for n, stage in enumerate(STAGES, start=1):
        levels = ", ".join(f"{_level_sql(by_name[name])} AS level_{name}" for name in stage)
        weight += "".join(f" + {_weight_sql(weights, name)}" for name in stage)
        done += stage
        ahead = sum(max(weights.levels[name]) for name in by_name if name not in done)
        sql += (f", stage{n} AS (SELECT * FROM (SELECT *, {levels} FROM stage{n - 1}) "  # noqa: S608
                f"WHERE {weight} + {_literal(ahead)} >= {_literal(REVIEW_WEIGHT - SLACK)})")
    chosen = ", ".join(f"level_{name}" for name in by_name)
    return f"{sql} SELECT unique_id_l, unique_id_r, {chosen} FROM stage{len(STAGES)}"  # noqa: S608


def _feature_columns() -> list[str]:
    return [name for name in features(MatchRecord(0)) if name not in RULE_COLUMNS]


def _level_sql(comparison: Comparison) -> str:
    cases = " ".join(f"WHEN {level.sql} THEN {i}" for i, level in enumerate(comparison.levels) if level.sql != "ELSE")
    return f"CASE {cases} ELSE {len(comparison.levels) - 1} END"


def _weight_sql(weights: Weights, name: str) -> str:
    cases = " ".join(f"WHEN {i} THEN {_literal(w)}" for i, w in enumerate(weights.levels[name]))
    return f"(CASE level_{name} {cases} END)"


def _literal(value: float) -> str:
    """A DOUBLE literal that round-trips (a plain decimal literal would be parsed as DECIMAL)."""
    return f"{value:.17e}"


def _numbers_differ(numbers: dict[int, str | None], a: int, b: int) -> bool:
    return numbers_keep_apart(numbers[a], numbers[b])


# Why a relink holds a record, or a pair it would have linked, because the link would join records kept apart.
BRIDGE = ("a record of the pair links to two records kept apart (their given names differ or neither has one, or "
          "a reviewer separated them) and cannot join both")


@dataclass(frozen=True)
class Apart:
    """What keeps records from one person beyond a pair's own levels (see `_components`)."""

    separated: set[tuple[int, int]]  # pairs a reviewer decided are two people
    kept: set[tuple[int, int]]  # pairs a reviewer decided are one person: never refused
    unnamed: set[int]  # records without a given name (`compare.given_text`)
    names_differ: Callable[[int, int], bool]  # `compare.names_keep_apart` of two records
    # `compare.given_names_conflict` of two records but for the NHS-number exception: held through any record
    elements_differ: Callable[[int, int], bool] | None = None


def _components(records: list[MatchRecord], links: list[tuple[int, int, float]], numbers: dict[int, str | None],
                apart: Apart | None = None) -> tuple[Clustering, list[tuple[int, int, float]]]:
    """Persons from the links (union-find) under the rules that hold across a third record, then split any
    that would join two valid NHS numbers (`numbers_keep_apart`; identifiers without a check digit are
    weighed by the model, not split on). Also returns the links refused, for review.

    A rule that holds a pair must hold through other records too, or persons (connected components) undo it:
    twins Amy and Zoe Jones without NHS numbers both link to a record with their surname only (a newborn's
    before naming, an unknown patient's), and a relink joined them through it. But a chain of records whose
    given names agree pair by pair (Joe, Joseph, "Jooseph") is evidence of one person although its ends differ,
    and holding every such chain split real people (branch ident-transitive, architecture.md, 2026-12-06). So
    links are joined in order: a reviewer's first, then those between two records with given names (never
    refused but by a reviewer's separation), then those of a record without one, strongest first, each refused
    if it would put in one person two records the given-name rules keep apart (`compare.names_keep_apart`) or a
    reviewer separated. A record without a given name whose link is refused, itself in no pair kept apart,
    matched two people kept apart: it is held alone for review, and the persons are made again without its links
    (as real time holds it, `realtime.match`); so is any record linked across a reviewer's separation."""
    apart = apart or Apart(set(), set(), set(), lambda a, b: False)
    torn: set[int] = set()
    while True:
        joined, best, refused, found = _join(records, links, apart, torn)
        if found <= torn:
            break
        torn |= found
    cluster_of: dict[int, int] = {}
    held: set[int] = set(torn)
    for root, ids in joined.items():
        distinct = {numbers[i] for i in ids if numbers[i]}
        if sum(1 for x in distinct if x and is_valid(x)) <= 1:  # `numbers_keep_apart` needs two valid ones
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
    return Clustering(cluster_of, probability, held_for_review=held, torn=torn), refused


def _join(records: list[MatchRecord], links: list[tuple[int, int, float]], apart: Apart, torn: set[int],
          ) -> tuple[dict[int, list[int]], dict[int, float], list[tuple[int, int, float]], set[int]]:
    """One pass of `_components`' joining, the `torn` records' links refused: the persons (root -> its
    records), each record's strongest link joined, the links refused and the records found torn."""
    parent = {r.record_id: r.record_id for r in records}
    joined: dict[int, list[int]] = {r.record_id: [r.record_id] for r in records}
    separated: dict[int, set[int]] = {}
    for x, y in apart.separated:
        separated.setdefault(x, set()).add(y)
        separated.setdefault(y, set()).add(x)
    kept = {r for pair in apart.kept for r in pair}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def conflicts(ra: int, rb: int, bridged: bool) -> tuple[set[int], bool]:
        """The records of the pairs kept apart the join of these two persons would hold, and whether a
        reviewer's separation or given names that differ element by element are among them (either holds
        through any record, so the record that would join them is torn)."""
        side = set(joined[rb])
        found = {x for x in joined[ra] if x in separated and not side.isdisjoint(separated[x])}
        found |= {y for x in found for y in separated[x] & side}
        if apart.elements_differ is not None:
            found |= {r for x in joined[ra] for y in joined[rb] if apart.elements_differ(x, y) for r in (x, y)}
        by_reviewer = bool(found)
        if bridged:
            found |= {r for x in joined[ra] for y in joined[rb] if apart.names_differ(x, y) for r in (x, y)}
        return found, by_reviewer

    def order(link: tuple[int, int, float]) -> tuple[bool, bool, float, int, int]:
        a, b, p = link
        return ((min(a, b), max(a, b)) not in apart.kept, a in apart.unnamed or b in apart.unnamed, -p,
                min(a, b), max(a, b))

    best: dict[int, float] = defaultdict(float)
    refused: list[tuple[int, int, float]] = []
    found: set[int] = set()
    for a, b, p in sorted(links, key=order):
        ra, rb = find(a), find(b)
        if ra == rb:
            best[a], best[b] = max(best[a], p), max(best[b], p)
            continue
        if (min(a, b), max(a, b)) not in apart.kept:
            if a in torn or b in torn:
                refused.append((a, b, p))
                continue
            held, by_reviewer = conflicts(ra, rb, a in apart.unnamed or b in apart.unnamed)
            if held:
                refused.append((a, b, p))
                found |= {r for r in (a, b) if r not in held and r not in kept and (by_reviewer or r in apart.unnamed)}
                continue
        if len(joined[ra]) < len(joined[rb]):
            ra, rb = rb, ra
        parent[rb] = ra
        joined[ra] += joined.pop(rb)
        best[a], best[b] = max(best[a], p), max(best[b], p)
    return joined, best, refused, found
