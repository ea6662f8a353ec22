"""The one settings object. Environment variables override the defaults.

SHAREDCARE_DB          SQLAlchemy URL (default: SQLite file var/sharedcare.db under the working directory)
SHAREDCARE_FRAMEWORK   path of the information-sharing framework (default: config/framework.yaml)
SHAREDCARE_MAPPINGS    folder of CSV mappings, one `{ORG}-{system}.yaml` per source (default: config/mappings)
SHAREDCARE_SECRET      key that signs access tokens and portal sessions (required outside demo mode)
SHAREDCARE_DEMO        "1" allows the built-in demo key and the demo sign-in password
SHAREDCARE_INGEST_WORKERS  processes that parse and validate large feed files in parallel (default: the CPU
                       count; 0 or 1 stages every message in the ingesting process itself)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sharedcare.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_SECRET = "sharedcare-demo-signing-key-not-for-production"  # noqa: S105 - refused outside demo mode
DEMO_PASSWORD = "demo"  # noqa: S105 - the demo sign-in, only accepted in demo mode


@dataclass(frozen=True)
class Settings:
    database_url: str
    framework_path: Path
    mappings_path: Path
    secret: str
    demo: bool
    token_minutes: int = 60
    ingest_workers: int = 0

    def require_safe_secret(self) -> None:
        """Refuse to serve real users with the published demo key (TRUST DP4)."""
        if self.secret == DEMO_SECRET and not self.demo:
            raise ConfigError("SHAREDCARE_SECRET is unset or the demo key; set a secret or SHAREDCARE_DEMO=1")


def default_database_url() -> str:
    path = Path.cwd() / "var" / "sharedcare.db"
    return f"sqlite:///{path}"


def load_settings() -> Settings:
    """Read settings from the environment, each time (tests change it)."""
    return Settings(
        database_url=os.environ.get("SHAREDCARE_DB") or default_database_url(),
        framework_path=Path(
            os.environ.get("SHAREDCARE_FRAMEWORK") or PROJECT_ROOT / "config" / "framework.yaml"
        ),
        mappings_path=Path(os.environ.get("SHAREDCARE_MAPPINGS") or PROJECT_ROOT / "config" / "mappings"),
        secret=os.environ.get("SHAREDCARE_SECRET") or DEMO_SECRET,
        demo=os.environ.get("SHAREDCARE_DEMO") == "1",
        ingest_workers=_workers(os.environ.get("SHAREDCARE_INGEST_WORKERS")),
    )


def _workers(value: str | None) -> int:
    if not value:
        return os.cpu_count() or 1
    try:
        workers = int(value)
    except ValueError:
        raise ConfigError(f"SHAREDCARE_INGEST_WORKERS must be a whole number, not '{value}'") from None
    if workers < 0:
        raise ConfigError(f"SHAREDCARE_INGEST_WORKERS must be 0 or more, not {workers}")
    return workers

