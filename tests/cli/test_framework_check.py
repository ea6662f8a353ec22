"""`sharedcare framework check` and `framework explain` as an IG officer runs them on the file the board signs:
every problem at once, each on a line of its own naming its line and key, and a file that says two things
about one key refused (the board would sign the first, the software enforce the last)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from tests.cli.starts import deployment_that_starts_and_stops
from tests.conftest import FRAMEWORK_PATH
from typer.testing import CliRunner

from sharedcare.cli import app

runner = CliRunner(env={"COLUMNS": "400"})
TEXT = FRAMEWORK_PATH.read_text(encoding="utf-8")
GP_TIERS_END = "safeguarding: 2, sexual_health: 1, alerts: 2}\n  practice_nurse"
RXR_AGREEMENT = "agreement: {status: signed, signed: 2026-01-10, starts: 2026-02-01, ends: 2029-01-31,"


def _line_of(fragment: str, text: str, nth: int = 0) -> int:
    """The line of the nth (from 0) occurrence of `fragment`."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(fragment, at + 1)
    return text[:at].count("\n") + 1


def _replaced(old: str, new: str, text: str = TEXT) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "framework.yaml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(path))
    return path


def _problems(result: Result, path: Path) -> list[str]:
    """What `framework check` printed of a refused file: a first line naming it, then one problem a line."""
    assert result.exit_code == 2, result.output
    first, *problems = result.stderr.splitlines()
    assert first == f"error: {path} is invalid ({len(problems)} problem{'s' * (len(problems) != 1)}):"
    assert all(line.startswith("  line ") for line in problems), problems
    return [line.strip() for line in problems]


def test_a_key_written_twice_is_refused_naming_both_lines_and_serve_and_mllp_do_not_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """YAML keeps the last of two equal keys without a word: the GP's sexual health tier 1 then 3 became 3, a
    second `gp:` block replaced the first, a second `RXR:` dropped its local service codes."""
    text = _replaced(GP_TIERS_END, GP_TIERS_END.replace("alerts: 2}", "alerts: 2, sexual_health: 3}"))
    text = _replaced("  practice_nurse:\n", "  gp:\n    label: GP\n    purposes: [direct-care]\n"
                     "    tiers: {demographics: 3, summary: 3, encounters: 3, diagnostics: 3, hospital_detail: 3,\n"
                     "            community: 3, mental_health: 3, social_care: 3, safeguarding: 3, sexual_health: 3,\n"
                     "            alerts: 3}\n  practice_nurse:\n", text)
    text = _replaced("  RXR:\n", "  RXR:\n    name: Riverside University Hospitals NHS Trust\n    kind: acute\n"
                     "    agreement: {status: signed, signed: 2026-01-10, starts: 2026-02-01, ends: 2029-01-31,\n"
                     "                signatories: [\"Prof. Ian Rowe, Caldicott Guardian\"]}\n  RXR:\n", text)
    path = _file(tmp_path, monkeypatch, text)
    tiers = _line_of("sexual_health: 1, alerts: 2, sexual_health: 3}", text)
    assert _problems(runner.invoke(app, ["framework", "check"]), path) == [
        f"line {tiers}, roles.gp.tiers.sexual_health: 'sexual_health' is written twice on this line; YAML keeps "
        "only the last, without a word, so the file does not say which is meant: remove one",
        f"line {_line_of('  gp:', text, 1)}, roles.gp: 'gp' is written twice (lines {_line_of('  gp:', text)} and "
        f"{_line_of('  gp:', text, 1)}); YAML keeps only the last, without a word, so the file does not say which "
        "is meant: remove one",
        f"line {_line_of('  RXR:', text, 1)}, organisations.RXR: 'RXR' is written twice (lines "
        f"{_line_of('  RXR:', text)} and {_line_of('  RXR:', text, 1)}); YAML keeps only the last, without a "
        "word, so the file does not say which is meant: remove one"]

    deployment_that_starts_and_stops(monkeypatch, tmp_path, path)
    for command in ("serve", "mllp"):  # nothing runs on a framework that says two things
        refused = runner.invoke(app, [command])
        assert refused.exit_code == 2, refused.output
        assert f"line {tiers}, roles.gp.tiers.sexual_health: 'sexual_health' is written twice" in refused.stderr


def test_every_problem_is_reported_at_once_one_a_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong type no longer hides the rest: fixing one problem and running again to find the next is gone."""
    text = _replaced("explicit-consent: {hours: 8,", "explicit-consent: {hours: eight,")
    text = _replaced("role: gp, organisation: P81001}", "role: gpp, organisation: P81001}", text)
    text = _replaced("mental_health: 0, social_care: 0, safeguarding: 0, sexual_health: 0, alerts: 2}\n  social_worker",
                     "mental_health: 5, social_care: 0, safeguarding: 0, sexual_health: 0, alerts: 2}\n  social_worker",
                     text)
    path = _file(tmp_path, monkeypatch, text)
    assert _problems(runner.invoke(app, ["framework", "check"]), path) == [
        f"line {_line_of('hours: eight', text)}, basis.explicit-consent.hours: Input should be a valid number",
        f"line {_line_of('mental_health: 5', text)}, roles.pharmacist.tiers.mental_health: tier 5 out of range 0-3",
        f"line {_line_of('role: gpp', text)}, users.dr.patel.role: unknown role 'gpp'"]


def test_a_role_with_a_wrong_type_is_still_known_to_the_checks_of_its_users(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks run on what did validate, but a role (or organisation) refused for its type is still a role:
    its users are not also told their role is unknown."""
    text = _replaced(GP_TIERS_END, GP_TIERS_END.replace("safeguarding: 2", "safeguarding: two"))
    text = _replaced("    kind: acute\n", "    kind: hospital\n", text)
    path = _file(tmp_path, monkeypatch, text)
    assert _problems(runner.invoke(app, ["framework", "check"]), path) == [
        f"line {_line_of('safeguarding: two', text)}, roles.gp.tiers.safeguarding: Input should be a valid integer",
        f"line {_line_of('kind: hospital', text)}, organisations.RXR.kind: Input should be 'icb', 'gp', 'acute', "
        "'community', 'mental_health', 'ambulance', 'social_care', 'hospice', 'pharmacy' or 'care_home'"]


def test_yes_no_on_and_off_are_not_tiers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """YAML reads `yes` as true, which pydantic took for tier 1: a typo gave safeguarding headlines."""
    text = _replaced(GP_TIERS_END, GP_TIERS_END.replace("safeguarding: 2", "safeguarding: yes"))
    text = _replaced("min_reason_chars: 10", "min_reason_chars: on", text)
    path = _file(tmp_path, monkeypatch, text)
    bool_words = "YAML reads yes, no, on, off, true and false as true or false, not a number"
    assert _problems(runner.invoke(app, ["framework", "check"]), path) == [
        f"line {_line_of('min_reason_chars: on', text)}, min_reason_chars: Input should be a valid integer "
        f"({bool_words})",
        f"line {_line_of('safeguarding: yes', text)}, roles.gp.tiers.safeguarding: Input should be a valid integer "
        f"({bool_words})"]


def test_an_agreement_ending_before_it_starts_signed_after_it_ends_or_signed_by_no_one_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = _replaced("signed: 2026-01-20, starts: 2026-02-01, ends: 2029-01-31",
                     "signed: 2026-01-20, starts: 2026-02-01, ends: 2026-01-31")
    text = _replaced("signed: 2026-01-22, starts: 2026-02-01, ends: 2029-01-31",
                     "signed: 2030-01-22, starts: 2026-02-01, ends: 2029-01-31", text)
    text = _replaced('signatories: ["Dr Grace Achebe, Caldicott Guardian"]', 'signatories: [" "]', text)
    path = _file(tmp_path, monkeypatch, text)
    blank = _line_of('signatories: [" "]', text)
    assert _problems(runner.invoke(app, ["framework", "check"]), path) == [
        f"line {_line_of('ends: 2026-01-31', text)}, organisations.P81001.agreement.ends: ends (2026-01-31) "
        "before it starts (2026-02-01)",
        f"line {_line_of('signed: 2030-01-22', text)}, organisations.P81002.agreement.signed: signed (2030-01-22) "
        "after it ends (2029-01-31)",
        f"line {blank}, organisations.P81003.agreement.signatories.0: a signatory "
        "is blank: name who signed"]


def test_explain_says_when_an_agreement_is_not_in_force_and_whom_that_leaves_seeing_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agreement recorded "signed" that ended last year is not in force: its staff are refused, and explain
    said "signed". Care home staff's only organisation has a draft agreement: they see nothing today."""
    _file(tmp_path, monkeypatch, _replaced(RXR_AGREEMENT, "agreement: {status: signed, signed: 2023-01-10, "
                                                          "starts: 2023-02-01, ends: 2025-01-31,"))
    told = runner.invoke(app, ["framework", "explain"])
    assert told.exit_code == 0, told.output
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in told.stdout.splitlines() if line.startswith("│ ") and line.count("│") == 6}
    assert rows["RXR Riverside University Hospitals NHS Trust"][1:3] == [
        "signed 2023-01-10, from 2023-02-01 to 2025-01-31",
        "no (ended 2025-01-31)"]
    assert rows["P81001 Riverside Medical Centre"][1:3] == ["signed 2026-01-20, from 2026-02-01 to 2029-01-31", "yes"]
    assert rows["VWC01 Willow Court Care Home"][1:3] == ["draft", "no (draft)"]
    said = " ".join(told.stdout.split())
    assert ("Care home staff: currently see nothing, as no organisation of theirs (VWC01 Willow Court Care Home) "
            "has a sharing agreement in force today.") in said
    assert "Hospital clinician: currently see nothing" not in said  # St Brigid's Hospice's is in force

    care_home = json.loads(runner.invoke(app, ["framework", "explain", "--role", "care_home_staff", "--json"]).stdout)
    assert care_home["currently_see_nothing"] == {"care_home_staff": (
        "Care home staff: currently see nothing, as no organisation of theirs (VWC01 Willow Court Care Home) has "
        "a sharing agreement in force today.")}
    rxr = next(p for p in care_home["partners"] if p["code"] == "RXR")
    assert (rxr["agreement"], rxr["in_force"], rxr["starts"], rxr["ends"]) == (
        "signed", False, "2023-02-01", "2025-01-31")


def test_a_stale_csv_mapping_is_named_by_framework_check_and_at_the_start_of_serve_and_mllp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found before go-live, not in a day's quarantine: `framework check` refuses it naming file, line and key;
    `serve` and `mllp`, which read no CSV, start and say it (a stale mapping holds files, which replay)."""
    from tests.ingest.test_stale_mapping import stale_mapping_folder

    old, line = stale_mapping_folder(tmp_path, monkeypatch)
    problem = f"  line {line}, assessment.type: `text_only` is now `local`: its values are coded in the source's own"
    path = _file(tmp_path, monkeypatch, TEXT)
    checked = runner.invoke(app, ["framework", "check"])
    assert checked.exit_code == 2, checked.output
    assert checked.stderr.splitlines()[1:] == [f"error: {old.resolve()} is invalid (1 problem):",
                                               problem + " code system, so a role that sees coded data reads what "
                                                         "they are"]

    deployment_that_starts_and_stops(monkeypatch, tmp_path, path)
    for command in ("serve", "mllp"):
        started = runner.invoke(app, [command])
        assert started.exit_code == 0, started.output
        lines = started.stderr.splitlines()
        said = next(i for i, text in enumerate(lines) if text.startswith(f"warning: {old.resolve()} is invalid "
                                                                          "(1 problem): its files"))
        assert lines[said + 1].startswith(problem), lines

    old.write_text(old.read_text(encoding="utf-8").replace("text_only:", "local:"), encoding="utf-8")
    assert runner.invoke(app, ["framework", "check"]).exit_code == 0
