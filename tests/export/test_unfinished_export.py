"""An export that does not finish leaves nothing that looks like an extract: its files take their final names
only once the small-cell check and the last agreement check have passed. Interrupted (Ctrl-C, SIGTERM), it
deletes what it wrote; its process killed, the next touch of the service deletes what it wrote in the
service's folder; refused at its last check, `sharedcare export` says so and exits non-zero."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import update
from tests.conftest import DEPLOYMENT_KEYS, FRAMEWORK_PATH
from tests.export.conftest import unscreened
from tests.small_ics import Ics
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.export import jobs as export_jobs
from sharedcare.export.jobs import STALE_AFTER, ExportJobs
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.secondary import ExportScope
from sharedcare.governance.small_cells import SmallCells
from sharedcare.store.database import Database
from sharedcare.store.models import ExportJob

# A run held at its small-cell check, its lines written (the file named first is touched then), for the
# test to stop its process there; the rest of the arguments are `sharedcare`'s, or `run JOB DATA` for
# a server-side run of a job already started (as `ExportJobs.start`'s thread runs it)
HELD_AT_THE_CHECK = """
import sys, time
from dataclasses import replace
from pathlib import Path
from sharedcare.export import jobs

def held(lines, k):
    Path(sys.argv[1]).touch()
    time.sleep(120)

jobs.screen = held
if sys.argv[2] == "run":
    from sharedcare.config import load_settings
    from sharedcare.governance.framework import load_framework
    from sharedcare.store.database import Database
    settings = replace(load_settings(), data_path=Path(sys.argv[4]), export_workers=1)
    jobs.ExportJobs(Database(settings.database_url), load_framework(), settings).run(sys.argv[3])
else:
    from sharedcare.cli import app
    app(sys.argv[2:], prog_name="sharedcare")
"""

# `sharedcare export` whose worker processes each hold their share for two minutes once its files are written
# (each names itself by a file beside this script, named by its process id), as a large share would take.
# Run as a script file: a spawned worker runs the script's top level again, so it is held too.
HELD_IN_ITS_SHARE = """
import os, sys, time
from pathlib import Path
from sharedcare.export import jobs

close = jobs.NdjsonFiles.close

def held(self):
    files = close(self)
    (Path(__file__).parent / "workers" / str(os.getpid())).touch()
    time.sleep(120)
    return files

jobs.NdjsonFiles.close = held
if __name__ == "__main__":
    from sharedcare.cli import app
    app(sys.argv[1:], prog_name="sharedcare")
"""


def _environment(db: Database, tmp_path: Path) -> dict[str, str]:
    return {"SHAREDCARE_DB": db.url.render_as_string(hide_password=False), "SHAREDCARE_FRAMEWORK": str(FRAMEWORK_PATH),
            "SHAREDCARE_DATA": str(tmp_path / "data"), "SHAREDCARE_EXPORT_WORKERS": "1", **DEPLOYMENT_KEYS}


@pytest.fixture
def cli_env(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _environment(db, tmp_path).items():
        monkeypatch.setenv(name, value)


Held = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def held(db: Database, tmp_path: Path) -> Iterator[Held]:
    """Starts a process with these arguments (`HELD_AT_THE_CHECK`), returned once held at the check."""
    processes: list[subprocess.Popen[bytes]] = []
    marker = tmp_path / "at-the-check"

    def start(*arguments: str) -> subprocess.Popen[bytes]:
        marker.unlink(missing_ok=True)  # (held by an earlier one)
        process = subprocess.Popen([sys.executable, "-c", HELD_AT_THE_CHECK, str(marker), *arguments],  # noqa: S603
                                   env={**os.environ, **_environment(db, tmp_path)}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        processes.append(process)
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the export did not reach its small-cell check"
            time.sleep(0.05)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.usefixtures("ics", "cli_env")
def test_an_export_interrupted_by_ctrl_c_leaves_nothing_in_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the small-cell check reads the Patients: their lines, each person's source and month of
    birth as the pseudonymiser gave them, are already written; none is left, and nothing else in the folder
    is touched."""
    out = tmp_path / "extract"
    out.mkdir()
    (out / "notes.txt").write_text("the operator's own")

    def interrupted(lines: Iterable[bytes], k: int) -> tuple[Iterable[bytes], SmallCells]:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_jobs, "screen", interrupted)
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--user", "analyst.chen"])
    assert {path.name for path in out.iterdir()} == {"notes.txt"}
    assert result.exit_code != 0 and "was interrupted; none of its files was kept" in result.output


def test_an_export_stopped_by_sigterm_leaves_nothing_in_its_folder(ics: Ics, held: Held, tmp_path: Path) -> None:
    """`kill` (or a service manager stopping the host) while `sharedcare export` runs its small-cell check."""
    out = tmp_path / "extract"
    process = held("export", "--out", str(out), "--user", "analyst.chen")
    assert any(out.rglob("Patient.ndjson"))
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    assert not out.exists() or not any(out.iterdir())
    assert process.returncode == 128 + signal.SIGTERM and "was interrupted; none of its files was kept" in output


@pytest.mark.usefixtures("cli_env")
def test_an_export_deletes_what_a_killed_run_left_in_its_folder_but_not_a_running_ones(
        ics: Ics, held: Held, tmp_path: Path) -> None:
    """A killed `sharedcare export` (SIGKILL, the machine losing power) cleans up nothing: its hidden folder
    of unchecked Patients stays until the next export to that folder, which deletes it and says so; the
    folder of an export still running there is left alone."""
    out = tmp_path / "extract"
    running = held("export", "--out", str(out), "--user", "analyst.chen")
    [live] = [path for path in out.iterdir() if path.is_dir()]
    killed = held("export", "--out", str(out), "--user", "analyst.chen")
    killed.kill()
    killed.communicate(timeout=60)
    [left] = [path for path in out.iterdir() if path.is_dir() and path != live]
    assert any(left.rglob("Patient.ndjson")) and any(live.rglob("Patient.ndjson"))

    result = CliRunner().invoke(app, ["export", "--out", str(out), "--user", "analyst.chen"])
    assert result.exit_code == 0, result.output
    assert f"removed {left}" in result.output and str(live) not in result.output
    assert not list(out.glob(f"{left.name}*")) and any(live.rglob("Patient.ndjson"))
    assert (out / "Patient.ndjson").exists() and running.poll() is None


def _running(pid: int) -> bool:
    """Whether this process still runs (not ended, nor a zombie left to whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_an_export_running_in_several_processes_without_waiting_for_them(
        ics: Ics, db: Database, tmp_path: Path) -> None:
    """`systemctl stop` (or a container's) signals the command, not its workers: it stops them, cleans up and
    exits within seconds, rather than waiting for each to finish its share (two minutes here) and being
    killed by the service manager's timeout with its unchecked files left behind."""
    script, workers, out = tmp_path / "held_in_its_share.py", tmp_path / "workers", tmp_path / "extract"
    script.write_text(HELD_IN_ITS_SHARE)
    workers.mkdir()
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, str(script), "export", "--out", str(out), "--user", "analyst.chen"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, env={**os.environ, **_environment(db, tmp_path), "SHAREDCARE_EXPORT_WORKERS": "2",
                                       "SHAREDCARE_EXPORT_PEOPLE_PER_WORKER": "1"})
    try:
        deadline = time.monotonic() + 60
        while len(list(workers.iterdir())) < 2:
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the export's two workers did not both write their shares"
            time.sleep(0.05)
        assert any(out.rglob("*.part?.ndjson"))  # the shares written, in the run's partial folder
        process.send_signal(signal.SIGTERM)
        try:
            output = process.communicate(timeout=30)[0].decode()
        except subprocess.TimeoutExpired:
            pytest.fail("`sharedcare export` still running 30 s after SIGTERM: it waited for its workers")
        assert process.returncode == 128 + signal.SIGTERM and "was interrupted; none of its files was kept" in output
        assert not out.exists() or not any(out.iterdir())
        assert not [pid for pid in workers.iterdir() if _running(int(pid.name))]
    finally:
        for pid in workers.iterdir():
            if _running(int(pid.name)):
                os.kill(int(pid.name), signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_a_server_side_run_whose_process_died_has_its_files_deleted(
        ics: Ics, db: Database, framework: Framework, held: Held, tmp_path: Path) -> None:
    """The server dies (killed) while an analyst's export runs: its unchecked files are deleted at the next
    touch of the service once the run is taken for dead, and the poll says it stopped."""
    settings = ics.client.app.state.settings  # type: ignore[attr-defined]
    jobs = ExportJobs(db, framework, replace(settings, export_workers=1))
    job_id = jobs.start(actor_for(framework, "analyst.chen"), ExportScope("system"), "test", background=False)
    folder = settings.data_path / "exports" / job_id
    process = held("run", job_id, str(settings.data_path))
    process.kill()
    process.communicate(timeout=60)
    assert any(folder.rglob("Patient.ndjson"))
    (folder / "Patient.part0.ndjson").write_text("{}\n")  # as a run from before partial folders left them

    poll = ics.client.get(f"/fhir/bulk/{job_id}", headers=ics.token("analyst.chen"))
    assert poll.status_code == 202 and any(folder.rglob("*.ndjson"))  # still taken for running
    with db.session() as s:
        s.execute(update(ExportJob).where(ExportJob.id == job_id).values(updated_at=utcnow() - STALE_AFTER))
    poll = ics.client.get(f"/fhir/bulk/{job_id}", headers=ics.token("analyst.chen"))
    assert poll.status_code == 500 and "the export stopped" in poll.json()["issue"][0]["diagnostics"]
    assert not folder.exists()


@pytest.mark.usefixtures("cli_env")
def test_the_command_line_export_refused_at_its_last_check_exits_non_zero(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QRD's agreement is suspended while `sharedcare export` runs: nothing is kept, and the command says so
    and fails (a script running it must not take an empty folder for an extract)."""
    def suspended_meanwhile(lines: Iterable[bytes], k: int) -> tuple[Iterable[bytes], SmallCells]:
        with db.session() as s:
            set_agreement(s, framework, "QRD", "suspended", by="ig.morgan", reason="a breach reported")
        return unscreened(lines, k)

    monkeypatch.setattr(export_jobs, "screen", suspended_meanwhile)
    out = tmp_path / "extract"
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--user", "analyst.chen", "--json"])
    assert result.exit_code == 1, result.output
    assert "failed: not kept:" in result.output and "agreement" in result.output
    assert not out.exists() or not any(out.iterdir())
    assert not result.stdout.lstrip().startswith("{")  # no summary of an extract
