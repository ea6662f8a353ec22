"""Only the governance layer reads the store (TRUST AC2): API and portal code never opens a database
session or queries a table; the one place a session is handed over is `api/deps.py`, bound to an actor."""

from __future__ import annotations

import ast
from pathlib import Path

import sharedcare

PACKAGE = Path(sharedcare.__file__).parent
FORBIDDEN_IMPORTS = {"sqlalchemy", "sqlalchemy.orm", "sharedcare.store.models"}
ALLOWED = {"api/deps.py"}  # builds the GovernedRecords for each request


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in FORBIDDEN_IMPORTS:
            found.append(f"imports {node.module}")
        if isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names if a.name in FORBIDDEN_IMPORTS]
        if isinstance(node, ast.Attribute) and node.attr in {"session", "execute", "scalars"}:
            found.append(f"uses .{node.attr} at line {node.lineno}")
    return found


def test_api_and_portal_code_never_touch_the_database_directly() -> None:
    offences = {}
    for folder in ("api", "portal"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            rel = f"{folder}/{path.name}"
            if rel not in ALLOWED and _offences(path):
                offences[rel] = _offences(path)
    assert offences == {}


def test_the_checker_catches_a_route_that_queries_the_store(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from sqlalchemy import select\ndef route(db):\n    return db.session().execute(select(1))\n")
    assert len(_offences(sneaky)) == 3
