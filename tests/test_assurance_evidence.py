"""The assurance documents keep up with the code: every promise of the design's TRUST.md has a row in
docs/assurance/trust-evidence.md, every test a row cites exists, and the hazard log and the log
inventory hold what an IG officer and a Clinical Safety Officer would look for first."""

from __future__ import annotations

import ast
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).parent.parent
EVIDENCE = ROOT / "docs" / "assurance" / "trust-evidence.md"
HAZARDS = ROOT / "docs" / "safety" / "hazard-log.md"
INVENTORY = ROOT / "docs" / "operations" / "log-inventory.md"
SAFETY_CASE = ROOT / "docs" / "safety" / "safety-case-report.md"

# TRUST.md's checklist (kept in the shared design folder, outside this repository; copied here so that a
# clean clone can check it): every ID must have a row.
PROMISES = (
    [f"AC{n}" for n in range(1, 8)] + [f"CO{n}" for n in range(1, 6)] + [f"BG{n}" for n in range(1, 4)]
    + [f"AU{n}" for n in range(1, 9)] + [f"TE{n}" for n in range(1, 4)] + [f"DP{n}" for n in range(1, 6)]
    + [f"MP{n}" for n in range(1, 4)] + [f"SU{n}" for n in range(1, 5)] + [f"CS{n}" for n in range(1, 3)]
    + [f"OP{n}" for n in range(1, 4)]
)
STATUSES = ("met", "partly met", "not met")
ROW = re.compile(r"^\| (?P<id>[A-Z]{2}\d) \| .*? \| (?P<status>met|partly met|not met) \| ", re.MULTILINE)
CITATION = re.compile(r"`(?P<path>tests/[\w/]+\.py)::(?P<name>test_\w+)(?:\[[^\]`]*\])?`")
# The initial hazards TRUST CS2 names, as words the hazard log must use.
INITIAL_HAZARDS = ("wrong-patient merge", "allergy hidden", "stale consent", "audit loss", "suppression failure")


def citations(text: str) -> set[tuple[str, str]]:
    """Each `tests/path.py::test_name` a document cites (a parametrised id's brackets stripped)."""
    return {(m["path"], m["name"]) for m in CITATION.finditer(text)}


def missing_tests(cited: set[tuple[str, str]], root: Path) -> list[str]:
    """The citations whose file is absent or defines no such test function."""
    defined: dict[str, set[str]] = {}
    missing = []
    for path, name in sorted(cited):
        if path not in defined:
            file = root / path
            source = file.read_text(encoding="utf-8") if file.is_file() else ""
            defined[path] = {node.name for node in ast.walk(ast.parse(source))
                             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
        if name not in defined[path]:
            missing.append(f"{path}::{name}")
    return missing


def test_every_cited_test_exists() -> None:
    cited = citations(EVIDENCE.read_text(encoding="utf-8")) | citations(HAZARDS.read_text(encoding="utf-8"))
    assert len(cited) > 100
    assert missing_tests(cited, ROOT) == []


def test_a_citation_of_a_missing_test_or_file_is_caught(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_kept():\n    assert True\n")
    text = "`tests/test_x.py::test_kept[a-b]`, `tests/test_x.py::test_renamed`, `tests/test_gone.py::test_kept`"
    assert missing_tests(citations(text), tmp_path) == ["tests/test_gone.py::test_kept",
                                                        "tests/test_x.py::test_renamed"]


def test_every_promise_has_a_row() -> None:
    text = EVIDENCE.read_text(encoding="utf-8")
    rows = [(m["id"], m["status"]) for m in ROW.finditer(text)]
    assert sorted(id_ for id_, _ in rows) == sorted(PROMISES)  # each once, none unknown
    counts = {status: sum(1 for _, s in rows if s == status) for status in STATUSES}
    summary = f"{counts['met']} met, {counts['partly met']} partly met, {counts['not met']} not met"
    assert summary in text, f"the summary line should read: {summary}"


def test_the_hazard_log_covers_the_initial_hazards_and_awaits_its_safety_officer() -> None:
    text = HAZARDS.read_text(encoding="utf-8")
    lowered = text.lower()
    assert [h for h in INITIAL_HAZARDS if h not in lowered] == []
    hazards = re.findall(r"^### (HAZ-\d\d)\b", text, re.MULTILINE)
    assert len(hazards) >= 13 and len(set(hazards)) == len(hazards)
    for heading in ("Cause", "Effect on the patient", "Controls", "Initial risk", "Residual risk", "Open"):
        assert text.count(f"**{heading}**") == len(hazards), heading
    assert "NOT YET REVIEWED OR SIGNED" in text and "Clinical Safety Officer" in text


def _ratings(text: str, pattern: str) -> dict[str, tuple[str, str]]:
    return {m["id"]: (m["initial"], m["residual"]) for m in re.finditer(pattern, text, re.MULTILINE | re.DOTALL)}


def test_the_safety_case_report_is_this_releases_and_rates_every_hazard_as_the_log_does() -> None:
    """CS1: a clinical safety case report per release. It must name the version being released, list every
    hazard of the log with the log's own initial and residual ratings, and await the CSO's signature."""
    report = SAFETY_CASE.read_text(encoding="utf-8")
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.MULTILINE)
    assert version and f"# Clinical safety case report: sharedcare {version[1]}\n" in report
    logged = _ratings(HAZARDS.read_text(encoding="utf-8"), r"^### (?P<id>HAZ-\d\d) .*?\*\*Initial risk\*\*: "
                      r"[^=]*= (?P<initial>\d).*?\*\*Residual risk\*\*: [^=]*= (?P<residual>\d)")
    reported = _ratings(report, r"^\| (?P<id>HAZ-\d\d) [^|]+\| (?P<initial>\d) \| (?P<residual>\d) \|")
    assert len(logged) >= 13 and reported == logged
    assert "NOT YET REVIEWED OR SIGNED" in report and "| Clinical Safety Officer |" in report


def test_the_log_inventory_says_what_where_how_long_and_who() -> None:
    text = INVENTORY.read_text(encoding="utf-8")
    for log in ("## The audit log", "## The server log", "## The quarantine", "## Link events"):
        assert log in text, log
        section = text.split(log, 1)[1].split("\n## ", 1)[0]
        for question in ("**What**", "**Where**", "**How long**", "**Who can read it**"):
            assert question in section, (log, question)


CAF = ROOT / "docs" / "assurance" / "dspt-caf.md"
# NCSC CAF v3.2's contributing outcomes, which the CAF-aligned DSPT asks each organisation to answer.
CAF_OUTCOMES = (
    ["A1.a", "A1.b", "A1.c", "A2.a", "A2.b", "A3.a", "A4.a", "B1.a", "B1.b", "B2.a", "B2.b", "B2.c", "B2.d",
     "B3.a", "B3.b", "B3.c", "B3.d", "B3.e", "B4.a", "B4.b", "B4.c", "B4.d", "B5.a", "B5.b", "B5.c", "B6.a",
     "B6.b", "C1.a", "C1.b", "C1.c", "C1.d", "C1.e", "C2.a", "C2.b", "D1.a", "D1.b", "D1.c", "D2.a", "D2.b"])
CAF_ROW = re.compile(r"^\| (?P<outcome>[A-D]\d\.[a-e]) [^|]+\| (?P<share>sharedcare|shared|organisation) \| "
                     r"(?P<gives>[^|]+)\|", re.MULTILINE)


def test_every_caf_outcome_has_a_row_naming_real_promises_and_tests() -> None:
    """OP3: the DSPT/CAF mapping covers every outcome, says who carries it, and cites only promises that
    have a row of their own and tests that exist."""
    text = CAF.read_text(encoding="utf-8")
    rows = {m["outcome"]: m for m in CAF_ROW.finditer(text)}
    assert sorted(rows) == sorted(CAF_OUTCOMES)
    cited = set(re.findall(r"\b([A-Z]{2}\d)\b", text))
    assert cited and cited <= set(PROMISES), sorted(cited - set(PROMISES))
    for outcome, row in rows.items():  # the software's share is evidence: a promise, a test or a file here
        files = re.findall(r"`([\w/.-]+\.(?:toml|yaml|md|py))`|\]\(([\w/.-]+\.md)\)", row["gives"])
        paths = [CAF.parent / linked if linked else ROOT / quoted for quoted, linked in files]
        assert all(path.exists() for path in paths), f"{outcome} names a file that is not here: {paths}"
        if row["share"] != "organisation":
            assert re.search(r"\b[A-Z]{2}\d\b|tests/", row["gives"]) or paths, f"{outcome} cites no evidence"
    assert missing_tests(citations(text), ROOT) == []


REGISTER = ROOT / "docs" / "safety" / "change-register.md"
# The parts of the product that decide whose record is whose and what is seen (TRUST CS1's policy/,
# consent/, mpi/ and audit/).
SAFETY_RELEVANT = sorted(
    [f"src/sharedcare/governance/{name}.py" for name in ("policy", "consent", "gateway", "audit", "checkpoints",
                                                         "disclosure", "classify", "review", "patient_scope",
                                                         "secondary", "pseudonymise", "small_cells",
                                                         "agreements", "unnamed", "framework")]
    # unnamed: what of a service a reader may not know of leaves inside a record (HAZ-02); framework: the
    # classification digest and the local hospital service code table a category is worked out from
    # secondary: what goes into an extract; pseudonymise: what of it leaves, and how (dates shifted: HAZ-05);
    # small_cells: which quasi-identifiers of a Patient leave, given everyone else's in the extract (HAZ-05);
    # agreements: which organisations' agreements are in effect, from the file and the changes (HAZ-12)
    + ["src/sharedcare/store/database.py"]  # its Prepared statements write every audit entry
    # access_log: what the patient's "Who has looked" says of a look at what they may not see (HAZ-15)
    + ["src/sharedcare/governance/access_log.py"]
    # staging classifies each resource (in a worker for large runs); the writer stores that category (or
    # classifies one staging did not) under the framework's key, and a read trusts it: a wrong one releases
    # data at the wrong tier. The writer also keeps a late message from overwriting newer data, quarantines
    # what fails and queues competing registrations (HAZ-07, HAZ-13, HAZ-10).
    + ["src/sharedcare/ingest/staging.py", "src/sharedcare/ingest/pipeline.py"]
    # the codes ingest takes for a status (a withdrawal among them) and the extract keeps (HAZ-08, HAZ-05)
    + ["src/sharedcare/fhir/value_sets.py"]
    # PV1-10: the code a visit's category is worked out from, and the hold of an unlisted local code (HAZ-13)
    + ["src/sharedcare/ingest/hl7v2_map.py"]
    + [str(p.relative_to(ROOT)) for p in (ROOT / "src" / "sharedcare" / "identity").glob("*.py")
       if p.name not in ("__init__.py", "evaluate.py")]
    + ["src/sharedcare/identity/default_model.json"]
    + ["src/sharedcare/identity/placeholders.csv"])  # a form listed there is no name to match on (HAZ-01)
REGISTER_ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| `(?P<fingerprint>[0-9a-f]{16})` \| (?P<hazards>[^|]+) \| "
                          r"(?P<change>[^|]+) \| (?P<date>\d{4}-\d{2}-\d{2}) \|$", re.MULTILINE)


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_every_module_that_classifies_a_resource_is_safety_relevant() -> None:
    """A resource's category decides at which tier it is released; a module that computes one (and a read
    or an extract then trusts it) is reviewed against the hazards as `classify.py` itself is."""
    classifying = []
    for path in sorted((ROOT / "src" / "sharedcare").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ImportFrom) and node.module == "sharedcare.governance.classify"
                    and any(alias.name == "classify" for alias in node.names)):
                classifying.append(str(path.relative_to(ROOT)))
    assert "src/sharedcare/ingest/staging.py" in classifying
    assert sorted(set(classifying) - set(SAFETY_RELEVANT)) == []


def test_every_safety_relevant_change_names_its_hazards() -> None:
    """CS1: a change to a safety-relevant file fails here until the change register names the hazards it
    was weighed against (the message gives the row to complete)."""
    text = REGISTER.read_text(encoding="utf-8")
    latest = {m["file"]: m for m in REGISTER_ROW.finditer(text)}  # later rows replace earlier ones
    known = set(re.findall(r"^### (HAZ-\d\d) ", HAZARDS.read_text(encoding="utf-8"), re.MULTILINE))
    unreviewed = []
    for file in SAFETY_RELEVANT:
        row, now = latest.get(file), fingerprint(ROOT / file)
        if row is None or row["fingerprint"] != now:
            unreviewed.append(f"| `{file}` | `{now}` | HAZ-nn, ... | what changed | {datetime.now(UTC).date()} |")
            continue
        hazards = row["hazards"].strip()
        named = set(re.findall(r"HAZ-\d\d", hazards))
        assert named <= known, f"{file}: {sorted(named - known)} are not in the hazard log"
        assert named or hazards.startswith("none"), f"{file}: name the hazards, or 'none' and why"
    assert not unreviewed, ("safety-relevant files changed since their hazard review; add to "
                            "docs/safety/change-register.md:\n" + "\n".join(unreviewed))
