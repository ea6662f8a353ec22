"""The saved model scores a pair the same way in real time (Python) as Splink does in batch (SQL)."""

from __future__ import annotations

import json

import pytest

from sharedcare.identity.compare import COMPARISONS, MatchRecord, features
from sharedcare.identity.matching import _linker
from sharedcare.identity.model import MODEL_VERSION, Model, ModelError, default_model

RECORDS = [
    MatchRecord(1, given="Robert", family="Okafor", birth_date="1960-03-07", sex="male", postcode="RV1 2AB",
                phones=("07700 900123",)),
    MatchRecord(2, given="Bob", family="Okafor", birth_date="1960-07-03", sex="male", postcode="RV1 2AB"),
    MatchRecord(3, given="Robert", family="Okafor", birth_date="1960-03-07", sex="male", postcode="RV9 9ZZ",
                phones=("07700 900123",)),
    MatchRecord(4, given="Amy", family="Okafor", birth_date="1960-03-07", sex="female", postcode="RV1 2AB"),
    MatchRecord(5, given="Priya", family="Sharma", other_family=("Kapoor",), birth_date="1985-11-30", sex="female",
                postcode="LS6 1AA", postcodes=("RV2 3CD",)),
    MatchRecord(6, given="Priya", family="Kapoor", birth_date="1985-11-30", sex="female", postcode="RV2 3CD"),
    MatchRecord(7, nhs_number="9434765919", given="Robert", family="Okafor", birth_date="1960-03-07", sex="male"),
]


def test_python_scores_every_candidate_pair_exactly_as_splink_predicts_it() -> None:
    model = default_model()
    linker = _linker(RECORDS, model.json)
    relation = linker.inference.predict().as_duckdbpyrelation()
    predicted = [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]
    assert len(predicted) >= 10
    by_id = {r.record_id: features(r) for r in RECORDS}
    for row in predicted:
        score = model.score(by_id[row["unique_id_l"]], by_id[row["unique_id_r"]])
        assert score.match_weight == pytest.approx(row["match_weight"], abs=1e-6)
        assert score.probability == pytest.approx(row["match_probability"], abs=1e-9)


def test_the_waterfall_adds_up_and_names_every_level() -> None:
    model = default_model()
    a, b = features(RECORDS[4]), features(RECORDS[5])
    evidence = model.evidence(model.score(a, b).levels)
    assert evidence["match_weight"] == pytest.approx(
        evidence["prior_weight"] + sum(step["match_weight"] for step in evidence["comparisons"]), abs=0.05)
    assert {step["comparison"]: step["level"] for step in evidence["comparisons"]}["address"] == \
        "postcode in the other's address history"


def test_a_model_trained_for_other_comparisons_is_refused() -> None:
    old = json.loads(json.dumps(default_model().json))
    old["sharedcare_model_version"] = "2026.11-1"
    with pytest.raises(ModelError, match="does not fit"):
        Model(old)
    old["sharedcare_model_version"] = MODEL_VERSION
    old["comparisons"] = old["comparisons"][:-1]
    with pytest.raises(ModelError, match="email"):
        Model(old)


def test_real_time_screening_never_rules_out_a_pair_that_scoring_would_keep() -> None:
    """Real-time matching skips a candidate when its birth date and address, with the best the other
    comparisons could add, fall short of review: that must bound the pair's full weight from above."""
    from tests.identity.test_compare import CASES

    from sharedcare.identity.realtime import FIRST

    model = default_model()
    rest = [c for c in COMPARISONS if c not in FIRST]
    pairs = [(a, b) for a in RECORDS for b in RECORDS] + [pair for _, _, pair in CASES]
    for x, y in pairs:
        for a, b in ((features(x), features(y)), (features(y), features(x))):
            screened = model.prior_weight + model.ceiling(a, rest) + sum(model.weight(c, a, b) for c in FIRST)
            assert screened >= model.score(a, b).match_weight - 1e-9, (x, y)
