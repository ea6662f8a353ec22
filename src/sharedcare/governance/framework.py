"""The information-sharing framework: organisations, agreements, roles, tiers and users, as data.

The framework is the document partners sign; this module loads it and refuses a framework with any
problem, naming the line and key of each (unknown role, tier out of range, category missing...).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sharedcare.config import load_settings
from sharedcare.errors import FrameworkError

AgreementStatus = Literal["draft", "signed", "suspended", "ended"]
Basis = Literal["explicit-consent", "implied-consent", "emergency"]
OrgKind = Literal[
    "icb", "gp", "acute", "community", "mental_health", "ambulance", "social_care", "hospice", "pharmacy",
    "care_home",
]
SourceFormat = Literal["fhir", "hl7v2", "csv"]
# Governance functions a role may be granted, named `area:subject:action` like audit actions.
PERMISSIONS = frozenset({"governance:review:work", "governance:audit:search", "governance:agreement:set",
                         "governance:preference:view"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Agreement(_Strict):
    status: AgreementStatus
    signed: date | None = None
    starts: date | None = None
    ends: date | None = None
    signatories: list[str] = Field(default_factory=list)

    def in_force(self, today: date) -> bool:
        """Signed and inside its dates: only then may the organisation contribute or view."""
        if self.status != "signed":
            return False
        if self.starts and today < self.starts:
            return False
        return not (self.ends and today > self.ends)


class Organisation(_Strict):
    code: str
    name: str
    kind: OrgKind
    systems: dict[str, SourceFormat] = Field(default_factory=dict)
    phone: str = ""
    agreement: Agreement


class Role(_Strict):
    name: str
    label: str
    purposes: list[str]
    tiers: dict[str, int]
    citizen: bool = False  # a patient reading their own record: no organisation, no basis, only their record
    permissions: list[str] = Field(default_factory=list)  # governance functions (review queue, audit search...)

    def tier(self, category: str) -> int:
        return self.tiers.get(category, 0)


class BasisRule(_Strict):
    hours: float = Field(gt=0)
    needs_reason: bool
    review: bool


class Purpose(_Strict):
    identifiable: bool
    needs_basis: bool


class ReviewRules(_Strict):
    """When the IG review queue must be worked, and what counts as unusual access."""

    due_hours: float = Field(default=24, gt=0)
    patients_per_hour: int = Field(default=30, ge=1)


class WithholdRule(_Strict):
    id: str
    security: str
    explain: str


class User(_Strict):
    username: str
    name: str
    role: str
    organisation: str


class Framework(_Strict):
    version: str
    name: str
    area: str
    basis: dict[Basis, BasisRule]
    min_reason_chars: int = Field(ge=0)
    review: ReviewRules = Field(default_factory=ReviewRules)
    purposes: dict[str, Purpose]
    categories: dict[str, str]
    sensitive_categories: list[str]
    roles: dict[str, Role]
    always_withheld: list[WithholdRule]
    sensitive_codes: dict[str, list[str]]
    organisations: dict[str, Organisation]
    users: dict[str, User]

    def organisation(self, code: str) -> Organisation | None:
        return self.organisations.get(code)


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each key path in the YAML document to its 1-based line, so errors can name the line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(_line_index(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i)))
    return lines


def _where(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> str:
    """Name a key path with the line of its nearest ancestor that the file actually has."""
    for cut in range(len(path), -1, -1):
        found = lines.get(tuple(str(p) if not isinstance(p, int) else p for p in path[:cut]))
        if found is not None:
            return f"line {found}, {'.'.join(str(p) for p in path) or '(top)'}"
    return ".".join(str(p) for p in path)


def _with_names(raw: dict[str, Any]) -> dict[str, Any]:
    """Copy each mapping key (organisation code, role name, username) into its record."""
    data = dict(raw)
    data["organisations"] = {
        code: {"code": code, **(org or {})} for code, org in (raw.get("organisations") or {}).items()
    }
    data["roles"] = {name: {"name": name, **(role or {})} for name, role in (raw.get("roles") or {}).items()}
    data["users"] = {
        name: {"username": name, **(user or {})} for name, user in (raw.get("users") or {}).items()
    }
    return data


def _cross_checks(fw: Framework) -> list[tuple[tuple[Any, ...], str]]:
    """The rules a schema cannot express: references resolve, tiers are in range, nothing is missing."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    categories = set(fw.categories)
    for name, role in fw.roles.items():
        for purpose in role.purposes:
            if purpose not in fw.purposes:
                problems.append((("roles", name, "purposes"), f"unknown purpose '{purpose}'"))
        for category, tier in role.tiers.items():
            if category not in categories:
                problems.append((("roles", name, "tiers", category), f"unknown category '{category}'"))
            if not 0 <= tier <= 3:
                problems.append((("roles", name, "tiers", category), f"tier {tier} out of range 0-3"))
        for permission in role.permissions:
            if permission not in PERMISSIONS:
                problems.append((("roles", name, "permissions"), f"unknown permission '{permission}'"))
        if "direct-care" in role.purposes or role.citizen:
            for category in sorted(categories - set(role.tiers)):
                problems.append((("roles", name, "tiers"), f"category '{category}' missing"))
    for category in fw.sensitive_categories:
        if category not in categories:
            problems.append((("sensitive_categories",), f"unknown category '{category}'"))
    for category in fw.sensitive_codes:
        if category not in categories:
            problems.append((("sensitive_codes", category), f"unknown category '{category}'"))
    for username, user in fw.users.items():
        if user.role not in fw.roles:
            problems.append((("users", username, "role"), f"unknown role '{user.role}'"))
        if user.organisation not in fw.organisations:
            problems.append((("users", username, "organisation"),
                             f"unknown organisation '{user.organisation}'"))
    for code, org in fw.organisations.items():
        agreement = org.agreement
        if agreement.status == "signed" and not (agreement.signed and agreement.signatories):
            problems.append((("organisations", code, "agreement"), "a signed agreement needs a date and signatories"))
    return problems


def parse_framework(text: str, source: str = "<framework>") -> Framework:
    """Parse and check a framework document; raise FrameworkError listing every problem found."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "unknown line"
        raise FrameworkError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})"], source) from exc
    if not isinstance(raw, dict) or root is None:
        raise FrameworkError(["line 1: the framework must be a mapping of keys"], source)
    lines = _line_index(root)
    try:
        fw = Framework.model_validate(_with_names(raw))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append(f"{_where(lines, loc)}: {err['msg']}")
        raise FrameworkError(problems, source) from exc
    cross = _cross_checks(fw)
    if cross:
        raise FrameworkError([f"{_where(lines, path)}: {msg}" for path, msg in cross], source)
    return fw


def load_framework(path: Path | None = None) -> Framework:
    """Load the framework named by SHAREDCARE_FRAMEWORK (or `path`), checked."""
    path = path or load_settings().framework_path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FrameworkError([f"cannot read the framework file ({exc.strerror})"], str(path)) from exc
    return parse_framework(text, str(path))
