"""Records made before a person is named or identified: newborns' birth records and unknown patients'."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from synth_helpers import SynthRun, patient

from sharedcare.governance.framework import Framework
from sharedcare.identity.compare import family_text, given_text
from sharedcare.synth import generate
from sharedcare.synth.noise import ERROR_RATES
from sharedcare.synth.unnamed import NOT_KNOWN_POSTCODE

PEOPLE, SEED = 3000, 23


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, framework: Framework) -> SynthRun:
    root = tmp_path_factory.mktemp("unnamed")
    return SynthRun(root, generate(root, PEOPLE, SEED, framework=framework))


def _nhs(p: dict[str, Any]) -> str | None:
    return next((i["value"] for i in p.get("identifier", []) if i["system"].endswith("nhs-number")), None)


def _given(p: dict[str, Any]) -> str | None:
    return (p["name"][0].get("given") or [None])[0]


def test_newborns_have_a_birth_record_before_naming_some_with_the_nhs_number_issued_at_birth(big: SynthRun) -> None:
    births = [b for b in big.bundles("RXR") if b["entry"][1]["resource"].get("serviceType", {}).get("text")
              == "Maternity: birth"]
    assert len(births) > 0.03 * PEOPLE  # children under five, most born at the ICS's trust
    truth = {(r["source_org"], r["source_id"]): r["person_key"] for r in big.truth()}
    gp = {}
    for b in big.bundles("P8100*"):
        p = patient(b)
        gp[truth[(b["meta"]["source"].split("|")[1].split("#")[0], p["id"])]] = p
    with_number = 0
    for b in births:
        p = patient(b)
        assert given_text(_given(p)) is None, _given(p)  # a placeholder, or no given name at all
        named = gp[truth[("RXR", p["id"])]]  # the truth names the baby, whose GP record is named
        assert (p["birthDate"], p["name"][0]["family"]) == (named["birthDate"], named["name"][0]["family"])
        if _nhs(p):
            assert _nhs(p) == _nhs(named)
            with_number += 1
    assert 0.5 * len(births) < with_number < 0.9 * len(births)
    forms = Counter((_given(patient(b)) or "").split(" ")[0] for b in births)
    assert {"Baby", "Twin", "", "B/O"} <= set(forms), forms


def test_an_unknown_patient_is_registered_with_a_guessed_birth_date_and_no_address(big: SynthRun) -> None:
    unknown = [patient(b) for b in big.bundles("RYA")
               if patient(b).get("address", [{}])[0].get("postalCode") == NOT_KNOWN_POSTCODE]
    assert unknown
    for p in unknown:
        assert p["birthDate"].endswith("-01-01") and _nhs(p) is None
        assert "telecom" not in p and "contact" not in p
        assert given_text(_given(p)) is None
        assert ("RYA", p["id"]) in {(r["source_org"], r["source_id"]) for r in big.truth()}
    assert any(family_text(p["name"][0]["family"]) is None for p in unknown)  # "UNKNOWN" / "Not known"


def test_most_unknown_patients_are_sent_again_later_under_their_real_details(big: SynthRun) -> None:
    """The ambulance service resends an identified patient's record (same id) after the call, with the name,
    birth date and sex their GP holds: what `mpi.rematch` matches again on arrival."""
    sent: dict[str, list[dict[str, Any]]] = {}
    for b in big.bundles("RYA"):
        sent.setdefault(patient(b)["id"], []).append(b)
    unknown = {pid: bundles for pid, bundles in sent.items()
               if patient(bundles[0]).get("address", [{}])[0].get("postalCode") == NOT_KNOWN_POSTCODE}
    identified = {pid: bundles for pid, bundles in unknown.items() if len(bundles) > 1}
    assert 0.5 * len(unknown) < len(identified) < len(unknown)
    person_of = {(r["source_org"], r["source_id"]): r["person_key"] for r in big.truth()}
    for pid, (call, again) in identified.items():
        assert again["timestamp"] > call["timestamp"]
        real = patient(again)
        practice = next(o for o, _ in sorted(big.records_of(person_of[("RYA", pid)])) if o.startswith("P8"))
        gp = patient(big.bundles_of(person_of[("RYA", pid)], practice)[0])
        assert (real["name"][0]["family"], _given(real), real["birthDate"], real["gender"]) == (
            gp["name"][0]["family"], _given(gp), gp["birthDate"], gp["gender"])


def test_the_extra_records_leave_everyone_elses_output_as_it_was(
        big: SynthRun, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed without the extra records: every file is the same lines in the same order, the
    extra records only added (their generator is their own)."""
    monkeypatch.setitem(ERROR_RATES["birth_record"], "rate", 0.0)
    monkeypatch.setitem(ERROR_RATES["unknown_patient"], "ambulance", 0.0)
    generate(tmp_path, PEOPLE, SEED, framework=framework)
    added = 0
    for path in sorted(tmp_path.rglob("*")):
        if path.is_dir() or path.name == "manifest.json":
            continue
        before = path.read_bytes().split(b"\n")
        after = (big.root / path.relative_to(tmp_path)).read_bytes().split(b"\n")
        kept = iter(after)
        assert all(line in kept for line in before), path  # in order: a subsequence
        added += len(after) - len(before)
    assert added > 0
