"""What an operator sees when the store is not as a command needs it: a schema behind the release, a role that may
not change it, a store that cannot be reached or is lost part-way, a key too short (operations review 2026-12-07)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import uvicorn
from psycopg import sql
from sqlalchemy import make_url, update
from sqlalchemy.exc import DBAPIError, OperationalError
from tests.builders import downgrade_store
from tests.cli.test_commands import _feed
from tests.conftest import DEPLOYMENT_KEYS
from tests.governance.test_audit import _write
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.governance.audit import verify
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Quarantine

runner = CliRunner(env={"COLUMNS": "400"})  # one line a message
# the newest migration this release ships (each file is named by its revision)
HEAD = max(path.name[:4] for path in (Path(__file__).parents[2] / "src/sharedcare/store/migrations/versions")
           .glob("0[0-9][0-9][0-9]_*.py"))


def _said(result: object) -> str:
    return " ".join(getattr(result, "stderr", "").split())


def test_a_command_on_a_schema_behind_the_release_stops_naming_init_and_changes_nothing(
        env: Database, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Every command migrated the schema: as the service's role, which owns nothing, `audit verify` (whose exit 1
    means a broken chain to a monitor) and `serve` failed with a traceback (`must be owner of table ...`)."""
    runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended", "--reason", "a breach reported"])
    downgrade_store(env, "0022")
    behind = runner.invoke(app, ["audit", "verify"])
    assert behind.exit_code == 2, behind.output
    assert (f"the store's schema is at 0022, this release needs {HEAD}: run `sharedcare init` as the schema owner"
            in _said(behind))
    assert env.schema_revision() == "0022"  # nothing migrated
    for name, value in DEPLOYMENT_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SHAREDCARE_DEMO", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("serve started on a schema behind"))
    served = runner.invoke(app, ["serve"])
    assert served.exit_code == 2 and "run `sharedcare init` as the schema owner" in _said(served), served.output
    assert env.schema_revision() == "0022"
    upgraded = runner.invoke(app, ["init"])
    assert upgraded.exit_code == 0, upgraded.output
    verified = runner.invoke(app, ["audit", "verify"])  # one chain marker still (migration 0024)
    assert verified.exit_code == 0 and "audit chain whole" in verified.stderr, verified.output


def test_a_new_sqlite_store_is_made_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo and a developer's store need no `init`: a store with no schema at all is made (SQLite only)."""
    monkeypatch.setenv("SHAREDCARE_DB", f"sqlite:///{tmp_path / 'new.db'}")
    no_roles = runner.invoke(app, ["init", "--grant-to", "sharedcare_app"])
    assert no_roles.exit_code == 2 and "--grant-to is for a PostgreSQL store" in _said(no_roles)
    assert not (tmp_path / "new.db").exists()  # refused before anything was made
    made = runner.invoke(app, ["audit", "verify"])
    assert made.exit_code == 0 and "1 entry verified" in made.stderr, made.output
    assert Database(f"sqlite:///{tmp_path / 'new.db'}").schema_revision() == HEAD


@pytest.mark.parametrize(("url", "code", "says"), [
    ("postgresql+psycopg://ops:s3cret-pw@127.0.0.1:9/care", 3,
     "cannot reach the store named by SHAREDCARE_DB (postgresql+psycopg://ops:***@127.0.0.1:9/care): connection "
     "refused"),
    ("postgres://ops:s3cret-pw@127.0.0.1/care", 2, "SHAREDCARE_DB (postgres://ops:***@127.0.0.1/care) names a "
                                                   "database or driver sharedcare cannot use"),
    ("ops:s3cret-pw@127.0.0.1/care", 2, "SHAREDCARE_DB is not a database URL"),
])
def test_a_store_that_cannot_be_reached_or_named_is_said_in_one_line_with_an_exit_code_of_its_own(
        monkeypatch: pytest.MonkeyPatch, url: str, code: int, says: str) -> None:
    """A wrong SHAREDCARE_DB gave a traceback and exit 1, which `audit verify` means as a broken chain."""
    monkeypatch.setenv("SHAREDCARE_DB", url)
    for args in (["audit", "verify"], ["quarantine", "check"], ["init"]):
        result = runner.invoke(app, args)
        assert result.exit_code == code and says in _said(result), (args, result.output)
        assert "s3cret-pw" not in result.output and "Traceback" not in result.output


def test_a_store_lost_mid_ingest_is_said_as_unreachable_not_as_a_traceback(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The database going away part-way through an ingest (a lost connection, as SQLAlchemy raises it)."""
    def lost(*args: object, **kwargs: object) -> None:
        raise OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown(
            "terminating connection due to administrator command"), connection_invalidated=True)

    monkeypatch.setattr(Pipeline, "_store_batch", lost)
    result = runner.invoke(app, ["ingest", str(_feed(tmp_path))])
    assert result.exit_code == 3, result.output
    assert ("cannot reach the store named by SHAREDCARE_DB" in _said(result)
            and "terminating connection due to administrator command" in _said(result))


def test_quarantine_check_compares_the_age_unrounded_with_the_service_level(env: Database,  # noqa: F811
                                                                             tmp_path: Path) -> None:
    """An item 24.04 hours old was rounded to 24.0 before the comparison, and so not late against 24 h."""
    runner.invoke(app, ["ingest", str(_feed(tmp_path))])  # one bundle held
    with env.session() as session:
        session.execute(update(Quarantine).values(received_at=utcnow() - timedelta(hours=24, minutes=2)))
    late = runner.invoke(app, ["quarantine", "check", "--older-than", "24", "--json"])
    assert late.exit_code == 1, late.output
    summary = json.loads(late.stdout)
    assert summary["late_groups"] == 1 and summary["groups"][0]["oldest_hours"] == 24.0  # shown rounded


def test_a_short_audit_key_is_named_as_too_short_not_as_the_wrong_key(
        env: Database, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("SHAREDCARE_DEMO", raising=False)
    assert runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended", "--reason", "x"]).exit_code == 0
    monkeypatch.setenv("SHAREDCARE_AUDIT_KEY", "twenty bytes of key!")
    for args in (["agreements", "set", "NHR", "--status", "signed", "--reason", "y"], ["quarantine", "check"]):
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2, refused.output
        assert "SHAREDCARE_AUDIT_KEY is 20 bytes; it must be at least 32" in _said(refused), refused.output


# The service's own role on PostgreSQL, as README sets one up: needs a test role that may create roles.


@pytest.fixture
def service_role(env: Database) -> Iterator[tuple[str, str]]:  # noqa: F811
    """A login role owning nothing (README's `sharedcare_app`) and the URL of the store as it: (role, URL)."""
    if env.backend != "postgresql":
        pytest.skip("roles and grants are PostgreSQL's")
    url = make_url(env.url)
    role = f"{url.database}_app"
    owner = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(owner, autocommit=True) as conn:
        if not conn.execute("SELECT rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            pytest.skip("the test role may not create roles (CREATEROLE)")
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'app'").format(sql.Identifier(role)))
        # a member, to end its connections (the commands' pools) before the test's database is dropped
        conn.execute(sql.SQL("GRANT {} TO current_user").format(sql.Identifier(role)))
    try:
        yield role, url.set(username=role, password="app").render_as_string(hide_password=False)
    finally:
        env.dispose()
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute(sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {} AND "
                                 "datname = current_database()").format(sql.Literal(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_service_role_is_told_to_have_the_owner_upgrade_and_init_names_or_grants_what_it_lacks(
        env: Database, service_role: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    role, as_service = service_role
    granted = runner.invoke(app, ["init", "--grant-to", role])
    assert granted.exit_code == 0 and f"granted {role}" in granted.stderr, granted.output
    downgrade_store(env, "0022")  # an upgrade of the release as it would be, from 0022: 0025 adds audit_tree_mark
    monkeypatch.setenv("SHAREDCARE_DB", as_service)
    behind = runner.invoke(app, ["audit", "verify"])
    assert behind.exit_code == 2 and f"the store's schema is at 0022, this release needs {HEAD}" in _said(behind)
    not_owner = runner.invoke(app, ["init"])
    assert not_owner.exit_code == 2 and "run `sharedcare init` as the schema's owner" in _said(not_owner)
    assert "must be owner" in _said(not_owner) and "Traceback" not in not_owner.output
    monkeypatch.setenv("SHAREDCARE_DB", env.url.render_as_string(hide_password=False))
    upgraded = runner.invoke(app, ["init"])  # the owner: the new tables are not the service's yet
    assert upgraded.exit_code == 0, upgraded.output
    assert (f"role {role} has no privileges on audit_tree_mark, export_job_persons, kept_searches: run `sharedcare "
            f"init --grant-to {role}`" in _said(upgraded))  # the tables made since 0022 (0025, 0027, 0037)
    regranted = runner.invoke(app, ["init", "--grant-to", role])
    assert regranted.exit_code == 0 and "no privileges" not in regranted.stderr, regranted.output
    monkeypatch.setenv("SHAREDCARE_DB", as_service)
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0 and "audit chain whole" in verified.stderr, verified.output
    checked = runner.invoke(app, ["quarantine", "check"])  # a writing command, as the service: its key checked
    assert checked.exit_code == 0, checked.output


# What the service's own role (README's `sharedcare_app`, owning nothing) could do with a temp table of its own
# (security review 2026-12-07): a trigger on one runs inside a trigger, as the chain's step did, which was all
# the head's guard asked of a step; and a temp table named `audit_head` came first on the chain's search path.
TEMP_TABLE_STEPS = [
    pytest.param("only by appending", [
        "CREATE TEMP TABLE t (x int)",
        "CREATE FUNCTION pg_temp.step() RETURNS trigger AS $$ BEGIN UPDATE public.audit_head SET seq = seq + 1, "
        "hash = repeat('f', 64) WHERE id = 1; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER step BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION pg_temp.step()",
        "INSERT INTO t VALUES (1)"], id="a trigger of its own steps the head"),
    pytest.param("only by appending", [
        "CREATE TEMP TABLE t (seq int, hash text, prev_hash text, action text)",
        "CREATE TRIGGER step AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit_events_chain()",
        "INSERT INTO t SELECT seq + 1, repeat('f', 64), hash, 'x' FROM public.audit_head"],
        id="the chain's own function steps the head"),
    pytest.param("must follow the head", [
        "CREATE TEMP TABLE audit_head AS SELECT * FROM public.audit_head",
        "UPDATE pg_temp.audit_head SET hash = repeat('a', 64)",
        "INSERT INTO audit_events (seq, recorded_at, action, outcome, event, prev_hash, hash) SELECT seq + 1, "
        "now(), 'x', 'permit', '{}', repeat('a', 64), repeat('b', 64) FROM pg_temp.audit_head"],
        id="a temp table named audit_head is stepped instead"),
]


@pytest.mark.parametrize(("refused", "statements"), TEMP_TABLE_STEPS)
def test_the_service_role_cannot_move_the_head_from_a_temp_table(
        env: Database, service_role: tuple[str, str], refused: str, statements: list[str]) -> None:  # noqa: F811
    """Each was let through: the head stepped with no entry (`audit verify` then said an entry was missing, as if
    the owner had cut it), or an entry written off the chain, on which the service's next append failed. The
    guard now lets the head step only to the entry it names (migration 0034), whoever runs the step."""
    role, as_service = service_role
    granted = runner.invoke(app, ["init", "--grant-to", role])
    assert granted.exit_code == 0, granted.output
    service = Database(as_service)
    try:
        with pytest.raises(DBAPIError, match="permission denied to create temporary tables"), \
                service.engine.begin() as conn:
            conn.exec_driver_sql(statements[0])  # README's grants leave the service no temp table
        with env.engine.begin() as conn:  # as a store granted before they did
            conn.exec_driver_sql(f'GRANT TEMPORARY ON DATABASE "{make_url(as_service).database}" TO "{role}"')
        seqs = _write(service, 2)
        with pytest.raises(DBAPIError, match=refused), service.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
        (last,) = _write(service, 1)
        with service.session() as session:
            result = verify(session)
    finally:
        service.dispose()
    assert result.ok and result.checked == last == seqs[-1] + 1
