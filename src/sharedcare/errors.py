"""Every error sharedcare raises on purpose derives from one class and says where and why."""

from __future__ import annotations


class SharedcareError(Exception):
    """Base of all deliberate errors; `where` names the file, line, segment or key at fault."""

    def __init__(self, message: str, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class FrameworkError(SharedcareError):
    """The information-sharing framework file is invalid."""

    def __init__(self, problems: list[str], path: str) -> None:
        self.problems = problems
        super().__init__("; ".join(problems), where=path)


class ConfigError(SharedcareError):
    """A setting is missing or unsafe (for example the demo signing key outside demo mode)."""
