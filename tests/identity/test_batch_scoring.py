"""A relink scores candidate pairs in its own DuckDB query (dropping pairs that cannot reach review as
it goes): it must find exactly the pairs, at exactly the levels, that Splink's predict finds at review or
above, save those two different valid NHS numbers keep apart by rule."""

from __future__ import annotations

import random

import duckdb

from sharedcare.identity.compare import COMPARISONS, MatchRecord, features, numbers_keep_apart
from sharedcare.identity.matching import Weights, _linker, score_pairs
from sharedcare.identity.model import REVIEW_THRESHOLD, default_model

GIVEN = ["Robert", "Bob", "Margaret", "Peggy", "Amy", "Priya", "Jon", "John"]
FAMILY = ["Okafor", "Okafur", "Sharma", "Kapoor", "Smith-Jones", "Smith"]
NUMBERS = ["9434765919", "9434765870", "4652817", "4658217", None, None, None]


def _records(n: int) -> list[MatchRecord]:
    """People drawn from few names, birth dates and postcodes, so that every level of every comparison
    is met by some pair, and pairs fall on both sides of review."""
    rng = random.Random(4)
    records = []
    for i in range(1, n + 1):
        day, month = rng.choice([(3, 7), (7, 3), (3, 8), (11, 12)])
        records.append(MatchRecord(
            i, nhs_number=rng.choice(NUMBERS), given=rng.choice(GIVEN), family=rng.choice(FAMILY),
            birth_date=f"19{rng.choice([60, 61])}-{month:02d}-{day:02d}", sex=rng.choice(["male", "female", None]),
            postcode=rng.choice(["RV1 2AB", "RV1 2AD", "RV1 9ZZ", "LS6 1AA", None]),
            other_family=tuple(rng.sample(FAMILY, rng.choice([0, 1]))),
            postcodes=tuple(rng.sample(["RV2 3CD", "RV1 2AB"], rng.choice([0, 1]))),
            phones=("07700 900123",) if rng.random() < 0.3 else (),
            email="a@example.org" if rng.random() < 0.2 else None))
    return records


def test_the_relinks_query_finds_every_pair_splink_predicts_at_review_with_the_same_levels() -> None:
    model = default_model()
    records = _records(120)
    numbers = {r.record_id: r.nhs_number for r in records}
    linker = _linker(records, model.json | {"retain_matching_columns": True})  # the gamma columns, to compare
    relation = linker.inference.predict(REVIEW_THRESHOLD).as_duckdbpyrelation()
    columns = ["unique_id_l", "unique_id_r", *(f"gamma_{c.name}" for c in COMPARISONS)]
    by_splink = {(a, b): tuple(model.level_of_gamma(c.name, g) for c, g in zip(COMPARISONS, gammas, strict=True))
                 for a, b, *gammas in relation.select(", ".join(columns)).fetchall()
                 if not numbers_keep_apart(numbers[a], numbers[b])}
    weights = Weights.of(linker)
    found = score_pairs(duckdb.connect(), [features(r) for r in records], weights)
    names = ["unique_id_l", "unique_id_r", *(f"level_{c.name}" for c in COMPARISONS)]
    columns = [found[name].tolist() for name in names]
    ours = {(a, b): tuple(key) for a, b, *key in zip(*columns, strict=True)}
    reaching = {pair: key for pair, key in ours.items() if weights.probability(key) >= REVIEW_THRESHOLD}
    assert len(by_splink) >= 100
    assert {c.name: len({key[n] for key in by_splink.values()}) for n, c in enumerate(COMPARISONS)}["name"] >= 4
    assert reaching == by_splink
    assert len(ours) < len(records) * (len(records) - 1) // 2 / 4  # most candidate pairs were dropped early
