"""The saved model scores a pair the same way in real time (Python) as Splink does in batch (SQL)."""

from __future__ import annotations

import json
import math

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


# Pairs at the levels the shipped model's training left unestimated (m or u): Splink scores them with its
# defaults, so real time must too, or a record would link on ingest where a relink would not.
UNESTIMATED = [
    MatchRecord(11, given="Robert", family="Okafor", birth_date="1960-03-07", postcode="RV1 2AB"),
    MatchRecord(12, given="Jane", family="Smith", birth_date="1960-03-07", postcode="RV1 2AB"),  # name different
    MatchRecord(13, given="Robert", family="Okafor", birth_date="1960-03-08", postcode="RV7 1XY"),  # one keying error
    MatchRecord(14, nhs_number="12345678", given="Ama", family="Mensah", birth_date="1971-05-02",
                email="ama@example.org"),
    MatchRecord(15, nhs_number="12345687", given="Ama", family="Mensah", birth_date="1971-05-02",
                email="ama@example.org"),  # identifier one keying error (no check digit), email exact
    MatchRecord(16, given="Ama", family="Mensah", birth_date="1971-05-02", email="a.mensah@example.com"),
]


def test_real_time_scores_levels_training_left_unestimated_as_the_relink_does() -> None:
    model = default_model()
    unestimated = {(c["output_column_name"], len(c["comparison_levels"]) - 1 - i)
                   for c in model.json["comparisons"] for i, level in enumerate(reversed(c["comparison_levels"]))
                   if not level.get("is_null_level") and (level.get("m_probability") is None
                                                          or level.get("u_probability") is None)}
    assert {("dob", 3), ("nhs_number", 2), ("email", 1), ("email", 2)} <= unestimated
    relation = _linker(UNESTIMATED, model.json).inference.predict().as_duckdbpyrelation()
    predicted = [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]
    by_id = {r.record_id: features(r) for r in UNESTIMATED}
    reached = set()
    for row in predicted:
        score = model.score(by_id[row["unique_id_l"]], by_id[row["unique_id_r"]])
        reached |= {(name, level) for name, level in score.levels.items()} & unestimated
        assert score.match_weight == pytest.approx(row["match_weight"], abs=1e-6)
    assert reached == {("dob", 3), ("nhs_number", 2), ("email", 1), ("email", 2)}
    assert model.weights["name"][8] < -5  # "name different" counts against a match, as in the relink


def test_a_model_saved_without_its_level_weights_is_refused() -> None:
    old = json.loads(json.dumps(default_model().json))
    del old["sharedcare_match_weights"]
    with pytest.raises(ModelError, match="saved weight"):
        Model(old)


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


def test_training_never_saves_a_level_a_true_match_reaches_as_a_veto() -> None:
    """EM on a synthetic ICS where no true pair moved within its district or changed phone drove those
    levels' m to ~0 (the model shipped until 2026.12-3: district -176.46, phone different -45.91), so such
    a person could never link. Training bounds them before the model is saved."""
    from sharedcare.identity.matching import M_PROBABILITY_FLOOR, Weights, bound_m_probabilities

    degenerate = json.loads(json.dumps(default_model().json))
    by_name = {c["output_column_name"]: c["comparison_levels"] for c in degenerate["comparisons"]}
    by_name["address"][4]["m_probability"] = 4.778560889101907e-55  # same postcode district
    by_name["phone"][1]["m_probability"], by_name["phone"][2]["m_probability"] = 1 - 1.5e-14, 1.5e-14
    linker = _linker(RECORDS, degenerate)
    before = Weights.of(linker).levels
    assert before["address"][4] < -150 and before["phone"][2] < -40
    bound_m_probabilities(linker)
    after = Weights.of(linker).levels
    for name, weights in after.items():
        assert min(weights[1:-1], default=weights[-1]) >= weights[-1], name  # partial agreement >= "different"
    u_phone_different = by_name["phone"][2]["u_probability"]
    assert after["phone"][2] == pytest.approx(math.log2(M_PROBABILITY_FLOOR / u_phone_different))
    assert {k: v for k, v in after.items() if k not in ("address", "phone")} == \
        {k: v for k, v in before.items() if k not in ("address", "phone")}


def test_training_bounds_a_level_em_never_observed_among_the_matches() -> None:
    """A level no true pair reached in the training data is saved by Splink as "not observed" and scored
    as m 1e-6: as much a veto as a degenerate estimate (phone "different" weighed -19.9). It is bounded too."""
    from splink.internals.constants import LEVEL_NOT_OBSERVED_TEXT

    from sharedcare.identity.matching import M_PROBABILITY_FLOOR, Weights, bound_m_probabilities

    linker = _linker(RECORDS, default_model().json)
    phone = next(c for c in linker._settings_obj.comparisons if c.output_column_name == "phone")
    different = phone.comparison_levels[-1]
    different.m_probability = LEVEL_NOT_OBSERVED_TEXT  # as EM leaves it (a saved model cannot hold it)
    assert Weights.of(linker).levels["phone"][2] < -19
    bound_m_probabilities(linker)
    assert Weights.of(linker).levels["phone"][2] == pytest.approx(
        math.log2(M_PROBABILITY_FLOOR / different.u_probability))


def test_training_on_data_where_every_true_pair_agrees_saves_no_veto() -> None:
    """EM on records whose duplicates always share phone, sex and birth date drives those "different"
    levels to a veto (-32.8, -52.3 and -32.8 here without the bound): one changed phone number would then
    keep a person's records apart for good. `train` bounds them before the model is saved."""
    import random

    from sharedcare.identity.matching import train

    rng = random.Random(7)
    given = ["Amy", "Ben", "Carl", "Dina", "Ella", "Finn", "Gita", "Hugo", "Isla", "Jack", "Kofi", "Lena"]
    family = ["Okafor", "Smith", "Jones", "Patel", "Khan", "Brown", "Evans", "Wilson", "Taylor", "Davies"]
    records = []
    for person in range(700):
        born = f"19{rng.randint(30, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        postcode = f"RV{rng.randint(1, 9)} {rng.randint(1, 9)}{rng.choice('ABCDEFGH')}{rng.choice('JKLMNP')}"
        shared = dict(given=rng.choice(given), family=rng.choice(family), birth_date=born,
                      sex=rng.choice(["male", "female"]), postcode=postcode,
                      phones=(f"07700 9{rng.randint(10000, 99999)}",))
        records += [MatchRecord(2 * person + 1, **shared), MatchRecord(2 * person + 2, **shared)]
    _, saved = train(records)
    for name, weights in Model(saved).weights.items():
        assert min(weights) > -15, name
        assert min(weights[1:-1], default=weights[-1]) >= weights[-1], name


def test_the_shipped_model_weighs_partial_agreement_at_least_as_much_as_disagreement() -> None:
    for name, weights in default_model().weights.items():
        assert min(weights[1:-1], default=weights[-1]) >= weights[-1], name
        assert min(weights) > -15, name
