"""`sharedcare ingest --source X` names the sender of messages that name none; a message that names another
sender the framework knows is refused, not stored as X's (a false provenance: shared and audited as X's).

What an operator sees: the refused message held, naming the file, the line or message and both senders; the
rest of the file stored; exit 1 (the run found a problem), as for any quarantined message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson
from tests.conftest import PROJECT_ROOT
from tests.ingest.test_csv_extract import _extract, _row
from tests.ingest.test_mllp import A01
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.fhir.uk_core import ODS_SYSTEM
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Quarantine

runner = CliRunner()


def _ingest(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["ingest", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def _stored(db: Database) -> list[tuple[str, str]]:
    with db.session() as s:
        return sorted((org, sid) for org, sid in s.execute(select(PatientRecord.source_org, PatientRecord.source_id)))


def _held(db: Database) -> list[tuple[str | None, str]]:
    with db.session() as s:
        return [(org, at) for org, at in s.execute(select(Quarantine.source_org, Quarantine.location)
                                                 .order_by(Quarantine.id))]


def _adt(sending: str, mrn: str, control_id: str) -> str:
    return (A01.format(dob="19450302").replace("|PAS|RXR|", f"|PAS|{sending}|").replace("MSG001", control_id)
            .replace("H900^^^RXR", f"{mrn}^^^RXR"))


def test_an_hl7_message_naming_another_known_sender_in_msh_4_is_refused(env: Database, tmp_path: Path) -> None:
    feed = tmp_path / "adt.hl7"
    feed.write_text("\r\n".join([_adt("RXR", "H1", "M1"), _adt("RYC", "H2", "M2"), _adt("RIVERSIDE", "H3", "M3")]),
                    encoding="latin-1")
    code, report = _ingest(str(feed), "--source", "RXR")
    assert code == 1 and (report["messages"], report["quarantined"]) == (3, 1)
    (refused,) = report["quarantine"]
    assert refused["where"] == f"{feed}, message 2 (MSH-10 M2), MSH-4"
    assert "MSH-4 names the sender RYC, but --source names RXR" in refused["reason"]
    # the one that names RXR, and the one whose MSH-4 is a local code, stored as RXR's; the other held as RYC's
    assert _stored(env) == [("RXR", "H1"), ("RXR", "H3")]
    assert _held(env) == [("RYC", "message 2 (MSH-10 M2)")]


def test_a_bundle_naming_another_known_sender_in_meta_source_is_refused(env: Database, tmp_path: Path) -> None:
    theirs = bundle("P81001", "emis", [patient("gp-1", "9434765919", "Hughes", "Margaret", "1952-06-11")])
    unnamed = bundle("P81002", "emis", [patient("gp-2", None, "Hughes", "Peggy", "1952-06-11")])
    del unnamed["meta"]
    ours = bundle("P81002", "emis", [patient("gp-3", None, "Jones", "Ann", "1960-01-01")])
    feed = write_ndjson(tmp_path / "gp.ndjson", [ours, theirs, unnamed])
    code, report = _ingest(str(feed), "--source", "P81002")
    assert code == 1 and (report["messages"], report["quarantined"]) == (3, 1)
    (refused,) = report["quarantine"]
    assert refused["where"].startswith(f"{feed}, line 2")
    assert "meta.source names the sender P81001, but --source names P81002" in refused["reason"]
    assert _stored(env) == [("P81002", "gp-2"), ("P81002", "gp-3")]
    assert _held(env) == [("P81001", "line 2")]


def test_a_bundle_entry_naming_another_known_sender_in_meta_source_is_refused(env: Database, tmp_path: Path) -> None:
    """A bundle with no meta of its own can still carry another organisation's entries: --source would overwrite
    each entry's meta.source, storing P81001's record as P81002's."""
    theirs = bundle("P81002", "emis", [patient("gp-0", None, "Jones", "Ann", "1960-01-01"),
                                       patient("gp-1", "9434765919", "Hughes", "Margaret", "1952-06-11")])
    del theirs["meta"]
    theirs["entry"][1]["resource"]["meta"] = {"source": f"{ODS_SYSTEM}|P81001#emis"}
    feed = write_ndjson(tmp_path / "gp.ndjson", [theirs])
    code, report = _ingest(str(feed), "--source", "P81002")
    assert code == 1 and (report["messages"], report["quarantined"]) == (1, 1)
    (refused,) = report["quarantine"]
    assert refused["where"] == f"{feed}, line 1, entry[1]"
    assert "meta.source names the sender P81001, but --source names P81002" in refused["reason"]
    assert _stored(env) == []
    assert _held(env) == [("P81001", "line 1")]


def test_without_source_a_bundle_entry_naming_another_known_sender_is_held_as_the_bundles_sender(
        env: Database, tmp_path: Path) -> None:
    """Without --source the bundle's own meta.source names its sender; an entry naming another organisation of
    the framework is not stored as the bundle's sender's (its meta.source overwritten): the message is held,
    naming both, as the bundle's sender's (who alone can send it again corrected), and the rest of the file is
    stored; the sender's corrected copy supersedes it."""
    mixed = bundle("P81002", "emis", [patient("gp-0", None, "Jones", "Ann", "1960-01-01"),
                                      patient("gp-1", "9434765919", "Hughes", "Margaret", "1952-06-11")])
    mixed["entry"][1]["resource"]["meta"] = {"source": f"{ODS_SYSTEM}|P81001#emis"}
    same = bundle("P81002", "emis", [patient("gp-2", None, "Hughes", "Peggy", "1952-06-11")])
    same["entry"][0]["resource"]["meta"] = {"source": f"{ODS_SYSTEM}|P81002#emis"}  # its own sender: stored
    feed = write_ndjson(tmp_path / "gp.ndjson", [mixed, same])
    code, report = _ingest(str(feed))
    assert code == 1 and (report["messages"], report["quarantined"]) == (2, 1)
    (refused,) = report["quarantine"]
    assert refused["where"] == f"{feed}, line 1, entry[1]"
    assert "meta.source names the sender P81001, but the message is sent as P81002" in refused["reason"]
    assert _stored(env) == [("P81002", "gp-2")]
    assert _held(env) == [("P81002", "line 1")]  # before: held as P81001's, which never sends it again
    corrected = json.loads(json.dumps(mixed))
    corrected["entry"][1]["resource"]["meta"] = {"source": f"{ODS_SYSTEM}|P81002#emis"}
    corrected["timestamp"] = "2026-11-02T09:00:00Z"
    code, report = _ingest(str(write_ndjson(tmp_path / "corrected.ndjson", [corrected])))
    assert code == 0 and ("P81002", "gp-1") in _stored(env)
    with env.session() as s:
        assert s.scalars(select(Quarantine.status)).one() == "superseded"
    mixed["type"], mixed["id"] = "batch", "another"  # a batch's entries stand alone: only that one is held
    code, report = _ingest(str(write_ndjson(tmp_path / "batch.ndjson", [mixed])))
    assert code == 1 and report["quarantine"][0]["where"].endswith("line 1, entry[1]")
    assert _held(env)[-1] == ("P81002", "line 1, entry[1]")


def test_a_csv_row_is_another_senders_only_by_its_folder_not_its_header(env: Database, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Organisations running the same system (Mosaic) write the same header: it names the system, not the sender.
    A loose file ingested with --source RYC is RYC's, held as RYC's (RYC has no mapping yet) and replayed as
    RYC's once it has one; never refused or stored as LRC's, whose mapping the header happens to fit."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    lrc = (PROJECT_ROOT / "config" / "mappings" / "LRC-mosaic.yaml").read_text(encoding="utf-8")
    (mappings / "LRC-mosaic.yaml").write_text(lrc, encoding="utf-8")
    monkeypatch.setenv("SHAREDCARE_MAPPINGS", str(mappings))
    loose = _extract(tmp_path / "extract.csv", [_row()])
    code, report = _ingest(str(loose), "--source", "RYC")
    assert code == 1 and report["quarantined"] == 1
    (held,) = report["quarantine"]
    assert "no mapping for RYC" in held["reason"] and "LRC" not in held["reason"].replace(str(mappings), "")
    assert _held(env) == [("RYC", "line 2")]
    still = runner.invoke(app, ["quarantine", "replay", str(held["id"])], env={"COLUMNS": "300"})
    assert still.exit_code != 0 and _stored(env) == []  # not stored as LRC's
    (mappings / "RYC-mosaic.yaml").write_text(lrc.replace("organisation: LRC", "organisation: RYC"), encoding="utf-8")
    replayed = runner.invoke(app, ["quarantine", "replay", str(held["id"]), "--source", "RYC"],
                             env={"COLUMNS": "300"})
    assert replayed.exit_code == 0, replayed.output
    assert _stored(env) == [("RYC", "C1")]
    foldered = _extract(tmp_path / "LRC" / "csv" / "extract.csv", [_row(client_id="C3", assessment_id="A3")])
    code, report = _ingest(str(foldered), "--source", "RYC")  # its folder does name its sender
    assert code == 1 and "its folder names the sender LRC, but --source names RYC" in report["quarantine"][0]["reason"]
    assert _held(env)[-1] == ("LRC", "line 2")
    code, report = _ingest(str(loose), "--source", "LRC")
    assert code == 0 and report["quarantined"] == 0
    assert _stored(env) == [("LRC", "C1"), ("RYC", "C1")]


def test_the_worker_processes_refuse_it_as_staging_inline_does(env: Database, framework: Framework,
                                                               tmp_path: Path) -> None:
    """A large feed is staged by worker processes (ingest/staging.py): the refusal, its place and the sender it
    is held as are the same."""
    feed = tmp_path / "adt.hl7"
    feed.write_text("\r\n".join([_adt("RXR", "H1", "M1"), _adt("RYC", "H2", "M2")]), encoding="latin-1")
    report = Pipeline(env, framework, workers=1, parallel_from_bytes=0).ingest_paths([feed], source="RXR")
    assert (report.messages, report.quarantined) == (2, 1)
    assert report.quarantine[0]["where"] == f"{feed}, message 2 (MSH-10 M2), MSH-4"
    assert _stored(env) == [("RXR", "H1")]
    assert _held(env) == [("RYC", "message 2 (MSH-10 M2)")]
