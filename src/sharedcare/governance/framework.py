"""The information-sharing framework: organisations, agreements, roles, tiers and users, as data.

The framework is the document partners sign; this module loads it and refuses a framework with any
problem, naming the line and key of each (unknown role, tier out of range, category missing...), all at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, get_origin
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, TypeAdapter, ValidationError, field_validator

from sharedcare.config import load_settings
from sharedcare.errors import FrameworkError
from sharedcare.governance.small_cells import DEFAULT_K
from sharedcare.yaml_lines import YamlProblem, line_of, read_yaml, where

AgreementStatus = Literal["draft", "signed", "suspended", "ended"]
Basis = Literal["explicit-consent", "implied-consent", "emergency"]
OrgKind = Literal[
    "icb", "gp", "acute", "community", "mental_health", "ambulance", "social_care", "hospice", "pharmacy",
    "care_home",
]
SourceFormat = Literal["fhir", "hl7v2", "csv"]
# What a role may do besides read, named `area:subject:action` like audit actions.
WRITE_PERMISSION = "clinical:record:write"  # add to and change the record over FHIR, as its organisation
PERMISSIONS = frozenset({"governance:review:work", "governance:audit:search", "governance:agreement:set",
                         "governance:preference:view", "access:emergency", "identity:review:work",
                         WRITE_PERMISSION})
ICD_10_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-uk"})
OPCS_4_SYSTEMS = frozenset({"http://fhir.nhs.net/CodeSystem/opcs-4", "http://fhir.nhs.uk/CodeSystem/opcs-4",
                            "https://fhir.nhs.uk/CodeSystem/opcs-4"})
# Code systems whose codes begin with their parent's (ICD-10's F32 holds F32.0 to F32.9; OPCS-4's Q10 holds
# Q10.1 to Q10.9), so `sensitive_codes` may list "system|F32*" for a code and every code under it. Not
# SNOMED CT: a concept id says nothing of its place, so each concept is listed (descendants not expanded).
# Each system URI of one classification names the same codes (ICD-10-UK adds to the WHO edition; OPCS-4 is
# written three ways), so a stem listed under one holds the codes sent under any of them.
STEM_SYSTEMS = {**{system: "icd-10" for system in ICD_10_SYSTEMS}, **{system: "opcs-4" for system in OPCS_4_SYSTEMS}}
STEM_PREFIXES = tuple(f"{system}|" for system in STEM_SYSTEMS)  # of a Coding as classify writes it


def code_stem(code: str) -> str:
    """A code of a `STEM_SYSTEMS` system as compared with a listed stem: upper case, without its dot, since
    sources write F32.9, F329 and f32.9 for one code."""
    return code.replace(".", "").upper()


def local_code_system(org: str, system: str, table: str) -> str:
    """The code system of one table of local codes that one sending system of an organisation uses, in the
    NHS England form of a local system: a code means what that system's table says, and no other's."""
    return f"https://fhir.{org.lower()}.nhs.uk/CodeSystem/{quote(system, safe='')}-{table}"


def hospital_service_system(org: str, system: str) -> str:
    """The local hospital service codes (HL7 v2 PV1-10) of one sending system: what a code means is
    `Organisation.service_codes`, and ingest keeps it in this system whether listed or not."""
    return local_code_system(org, system, "hospital-service")


class _Strict(BaseModel):
    """Unknown keys refused. Numbers are StrictInt or StrictFloat: YAML reads `yes`, `on` and `true` as true,
    which a plain int takes for 1 (`safeguarding: yes` was tier 1)."""

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
    # The subjects (RFC 4514, as `sharedcare mllp` logs them) of the TLS client certificates whose feeds may
    # send for this organisation: over TLS, MSH-4 must name an organisation listing the connection's own.
    feed_certificates: list[str] = Field(default_factory=list)
    # The local codes each HL7 v2 system of this organisation (MSH-3, a key of `systems`) sends for a visit's
    # hospital service (PV1-10), each to the national code it means ("system|code": the treatment function)
    # or to a sensitive category. A system listed here sends only these and national three-digit treatment
    # functions: a message with any other code is held until the code is listed (deny by default).
    service_codes: dict[str, dict[str, str]] = Field(default_factory=dict)

    @field_validator("feed_certificates")
    @classmethod
    def _subjects(cls, subjects: list[str]) -> list[str]:
        """Each written as RFC 4514 and kept in the form a certificate's subject is printed in, so that
        `CN=a,O=b` matches whatever spacing a certificate's own encoding had."""
        from cryptography import x509  # only when a framework lists certificates

        kept = []
        for subject in subjects:
            try:
                kept.append(x509.Name.from_rfc4514_string(subject).rfc4514_string())
            except ValueError:
                raise ValueError(f"'{subject}' is not a certificate subject in RFC 4514 form (like "
                                 "'CN=rxr-interface-engine,O=Riverside Hospital', no spaces after commas)") from None
        return kept


class Role(_Strict):
    name: str
    label: str
    purposes: list[str]
    tiers: dict[str, StrictInt]
    citizen: bool = False  # a patient reading their own record: no organisation, no basis, only their record
    permissions: list[str] = Field(default_factory=list)  # governance functions (review queue, audit search...)

    def tier(self, category: str) -> int:
        return self.tiers.get(category, 0)

    @property
    def writes(self) -> bool:
        """Whether its staff (and systems registered as it) may write to the record: a token's write scopes
        only narrow this, as read scopes narrow the tiers."""
        return WRITE_PERMISSION in self.permissions


class BasisRule(_Strict):
    hours: StrictFloat = Field(gt=0)
    needs_reason: bool
    review: bool
    permission: str | None = None  # a role must hold it to record this basis (break glass: TRUST BG1)


class Purpose(_Strict):
    identifiable: bool
    needs_basis: bool
    # A non-identifiable purpose's extracts publish no combination of a person's quasi-identifiers (sex,
    # birth, district, practice...) that fewer than this many people share (`small_cells.py`, HAZ-05)
    smallest_group: StrictInt | None = Field(default=None, ge=2, le=1000)

    @property
    def k(self) -> int:
        """The smallest group an extract for this purpose may publish (DEFAULT_K when not set)."""
        return self.smallest_group or DEFAULT_K


class ReviewRules(_Strict):
    """When the IG review queue must be worked, and what counts as unusual access."""

    due_hours: StrictFloat = Field(default=24, gt=0)
    patients_per_hour: StrictInt = Field(default=30, ge=1)
    people_found_per_hour: StrictInt = Field(default=30, ge=1)  # different people a user's patient searches found


class WithholdRule(_Strict):
    id: str
    security: str
    explain: str


@dataclass(frozen=True)
class SensitiveCodes:
    """One category's `sensitive_codes`: the codes listed ("system|code") and the stems ("system|F32*": the
    code and every code under it), as `code_stem` writes them, by classification (`STEM_SYSTEMS`)."""

    codes: frozenset[str]
    stems: dict[str, tuple[str, ...]]

    @staticmethod
    def of(entries: list[str]) -> SensitiveCodes:
        stems: dict[str, list[str]] = {}
        for entry in entries:
            system, _, code = entry.rpartition("|")
            if code.endswith("*") and system in STEM_SYSTEMS:
                stems.setdefault(STEM_SYSTEMS[system], []).append(code_stem(code[:-1]))
        return SensitiveCodes(frozenset(entry for entry in entries if not entry.endswith("*")),
                              {family: tuple(found) for family, found in stems.items()})


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
    min_reason_chars: StrictInt = Field(ge=0)
    review: ReviewRules = Field(default_factory=ReviewRules)
    purposes: dict[str, Purpose]
    categories: dict[str, str]
    sensitive_categories: list[str]
    roles: dict[str, Role]
    always_withheld: list[WithholdRule]
    sensitive_codes: dict[str, list[str]]
    # What each category's sensitive codes are, in plain words, for `framework explain` (a code list means
    # nothing to the board that signs it)
    sensitive_codes_explain: dict[str, str] = Field(default_factory=dict)
    # Types that, sent by a mental health, social care, community or hospice service, are filed as `alerts`
    # with tiers of their own rather than under the service (hazard HAZ-02: a known allergy must reach
    # whoever prescribes). Only the types `classify` files under summary by type may be named.
    safety_critical_types: list[Literal["AllergyIntolerance", "MedicationStatement", "Condition",
                                        "Immunization"]] = Field(default_factory=list)
    organisations: dict[str, Organisation]
    users: dict[str, User]

    def organisation(self, code: str) -> Organisation | None:
        return self.organisations.get(code)

    @property
    def local_service_codes(self) -> dict[str, str]:
        """Every local hospital service code the organisations list, as the Coding ingest keeps it
        ("system|code", the system naming the organisation and its sending system), to what it means: a
        national "system|code" or a sensitive category. Classify asks for it per resource, so the last table
        worked out is kept with the `organisations` it came from (held, so never mistaken for another; a
        `model_copy` with other organisations works it out again; a private attribute took 2 us to read)."""
        global _last_local_codes
        organisations, last = self.organisations, _last_local_codes
        if last[0] is not organisations:
            last = _last_local_codes = (organisations, {
                f"{hospital_service_system(code, system)}|{local}": target for code, org in organisations.items()
                for system, codes in org.service_codes.items() for local, target in codes.items()})
        return last[1]

    @property
    def sensitive_matchers(self) -> dict[str, SensitiveCodes]:
        """Each category's `sensitive_codes` as classify matches them, in the framework's order (the first
        listed category wins). Classify asks per resource, so the last worked out is kept with the
        `sensitive_codes` it came from (as `local_service_codes` is): a set, where a list was walked whole."""
        global _last_matchers
        listed, last = self.sensitive_codes, _last_matchers
        if last[0] is not listed:
            last = _last_matchers = (listed, {category: SensitiveCodes.of(entries)
                                              for category, entries in listed.items()})
        return last[1]

    @property
    def gp_practices(self) -> frozenset[str]:
        """The ODS codes of the GP practices: the organisations a person is registered with."""
        return frozenset(code for code, org in self.organisations.items() if org.kind == "gp")

    @property
    def classification_digest(self) -> str:
        """A digest of what classifying a resource depends on here: the sensitive codes (in order: the
        first listed category wins), the safety-critical types and each organisation's kind. A category
        stored at ingest under another digest is stale. Every governed read asks for it (5 us hot, 30 us
        in a request), so the last one worked out is kept with the objects it came from, held and compared
        by identity as `local_service_codes` is: a `model_copy(update=...)` with other codes, organisations
        or types works it out again (a value kept on the model itself would survive that copy)."""
        global _last_digest
        held, last = (self.sensitive_codes, self.organisations, self.safety_critical_types), _last_digest
        if last[0] is None or any(now is not before for now, before in zip(held, last[0], strict=True)):
            last = _last_digest = (held, _classification_digest(self))
        return last[1]


_last_local_codes: tuple[object, dict[str, str]] = (None, {})  # (organisations, their table): local_service_codes
_last_matchers: tuple[object, dict[str, SensitiveCodes]] = (None, {})  # (sensitive_codes, their matchers)
_last_digest: tuple[tuple[object, ...] | None, str] = (None, "")  # (its inputs, it): classification_digest


def _classification_digest(fw: Framework) -> str:
    inputs = {"sensitive_codes": [[category, sorted(codes)] for category, codes in fw.sensitive_codes.items()],
              "kinds": {code: org.kind for code, org in sorted(fw.organisations.items())}}
    if fw.safety_critical_types:  # only when listed: without them classification is as before
        inputs["safety_critical_types"] = sorted(fw.safety_critical_types)
    if fw.local_service_codes:  # likewise
        inputs["local_service_codes"] = sorted(fw.local_service_codes.items())
    return hashlib.sha256(orjson.dumps(inputs)).hexdigest()[:16]


def _with_names(raw: dict[str, Any]) -> dict[str, Any]:
    """Copy each mapping key (organisation code, role name, username) into its record (one that is not a mapping
    is left for the schema to name)."""
    data = dict(raw)
    for section, key in (("organisations", "code"), ("roles", "name"), ("users", "username")):
        entries = raw.get(section) or {}
        if isinstance(entries, dict):
            data[section] = {name: {key: name, **(entry or {})} if isinstance(entry, dict | None) else entry
                             for name, entry in entries.items()}
    return data


def _valid_parts(data: dict[str, Any]) -> Framework:
    """What of a framework its schema refused did validate, for the cross-checks to report on too (every problem
    at once): each section on its own and, of a section of named entries or a list, each entry on its own; what
    did not validate is left out (missing required sections empty)."""
    parts: dict[str, Any] = {}
    for name, field in Framework.model_fields.items():
        adapter: TypeAdapter[Any] = TypeAdapter(field.rebuild_annotation())  # with its constraints
        origin = get_origin(field.annotation)
        value = data.get(name)
        if name not in data and not field.is_required():
            parts[name] = field.get_default(call_default_factory=True)
        elif origin is dict and isinstance(value, dict):
            parts[name] = {k: v for key, entry in value.items() for k, v in _valid(adapter, {key: entry}, {}).items()}
        elif origin is list and isinstance(value, list):
            parts[name] = [v for item in value for v in _valid(adapter, [item], [])]
        else:
            parts[name] = _valid(adapter, value, {} if origin is dict else [] if origin is list else None)
    return Framework.model_construct(**parts)


def _valid(adapter: TypeAdapter[Any], value: Any, otherwise: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return otherwise


def _cross_checks(fw: Framework, data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """The rules a schema cannot express: references resolve, tiers are in range, nothing is missing, dates are
    in order. A reference is checked against the names the file gives (`data`), valid or not: a role refused for
    a wrong type is still one its users may name."""
    def named(section: str) -> set[str]:
        value = data.get(section)
        return {key for key in value if isinstance(key, str)} if isinstance(value, dict) else set(getattr(fw, section))

    problems: list[tuple[tuple[Any, ...], str]] = []
    categories, purposes, roles = named("categories"), named("purposes"), named("roles")
    for name, role in fw.roles.items():
        for purpose in role.purposes:
            if purpose not in purposes:
                problems.append((("roles", name, "purposes"), f"unknown purpose '{purpose}'"))
        for category, tier in role.tiers.items():
            if category not in categories:
                problems.append((("roles", name, "tiers", category), f"unknown category '{category}'"))
            if not 0 <= tier <= 3:
                problems.append((("roles", name, "tiers", category), f"tier {tier} out of range 0-3"))
        for permission in role.permissions:
            if permission not in PERMISSIONS:
                problems.append((("roles", name, "permissions"), f"unknown permission '{permission}'"))
        if role.writes and (role.citizen or "direct-care" not in role.purposes):
            problems.append((("roles", name, "permissions"), f"'{WRITE_PERMISSION}' is for staff roles giving "
                                                            "direct care: only they record care in the record"))
        if "direct-care" in role.purposes or role.citizen:
            for category in sorted(categories - set(role.tiers)):
                problems.append((("roles", name, "tiers"), f"category '{category}' missing"))
    for name, purpose_rule in fw.purposes.items():
        if purpose_rule.identifiable and purpose_rule.smallest_group is not None:
            problems.append((("purposes", name, "smallest_group"),
                             "applies only to a purpose that is not identifiable (its pseudonymised extracts)"))
    for basis, rule in fw.basis.items():
        if rule.permission is not None and rule.permission not in PERMISSIONS:
            problems.append((("basis", basis, "permission"), f"unknown permission '{rule.permission}'"))
    for category in fw.sensitive_categories:
        if category not in categories:
            problems.append((("sensitive_categories",), f"unknown category '{category}'"))
    if fw.safety_critical_types and "alerts" not in categories:
        problems.append((("safety_critical_types",), "needs the category 'alerts' (with a tier in each role) "
                                                     "that these types are filed into"))
    for category, entries in fw.sensitive_codes.items():
        if category not in categories:
            problems.append((("sensitive_codes", category), f"unknown category '{category}'"))
        for index, entry in enumerate(entries):
            problems += [(("sensitive_codes", category, index), problem) for problem in _sensitive_code_problems(entry)]
    for category in fw.sensitive_codes_explain:
        if category not in named("sensitive_codes"):
            problems.append((("sensitive_codes_explain", category), f"'{category}' has no sensitive codes to explain"))
    for username, user in fw.users.items():
        if not username.isprintable() or "\\" in username or username != username.strip() or len(username) > 100:
            # the audit names users as written (its `_clean` would escape these, and searches and a citizen's
            # "who looked" would then not find the user), in a column of 100 characters
            problems.append((("users", username), "a username is up to 100 printable characters without a "
                                                  "backslash or surrounding spaces"))
        if user.role not in roles:
            problems.append((("users", username, "role"), f"unknown role '{user.role}'"))
        if user.organisation not in named("organisations"):
            problems.append((("users", username, "organisation"),
                             f"unknown organisation '{user.organisation}'"))
    for code, org in fw.organisations.items():
        problems += _service_code_problems(fw, code, org)
        problems += _agreement_problems(("organisations", code, "agreement"), org.agreement)
    return problems


def _agreement_problems(path: tuple[Any, ...], agreement: Agreement) -> list[tuple[tuple[Any, ...], str]]:
    """An agreement's dates in order and its signatories named: the board signs what the file says."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    if agreement.status == "signed" and not (agreement.signed and agreement.signatories):
        problems.append((path, "a signed agreement needs a date and signatories"))
    if agreement.starts and agreement.ends and agreement.ends < agreement.starts:
        problems.append(((*path, "ends"), f"ends ({agreement.ends}) before it starts ({agreement.starts})"))
    if agreement.signed and agreement.ends and agreement.signed > agreement.ends:
        problems.append(((*path, "signed"), f"signed ({agreement.signed}) after it ends ({agreement.ends})"))
    problems += [((*path, "signatories", index), "a signatory is blank: name who signed")
                 for index, signatory in enumerate(agreement.signatories) if not signatory.strip()]
    return problems


def _sensitive_code_problems(entry: str) -> list[str]:
    """A `sensitive_codes` entry: "system|code", or "system|stem*" in a system whose codes begin with their
    parent's (`STEM_SYSTEMS`)."""
    system, bar, code = entry.rpartition("|")
    if not bar or not code.strip("*").strip() or not system.startswith(("http://", "https://", "urn:")):
        return [f"'{entry}' is not a code written system|code (http://snomed.info/sct|86406008)"]
    if "*" not in code:
        return []
    if system not in STEM_SYSTEMS:
        return [f"'{entry}': a '*' stands for the codes under a code only in ICD-10 and OPCS-4, whose codes begin "
                f"with their parent's; in {system} list each code"]
    if code.index("*") != len(code) - 1:
        return [f"'{entry}': a '*' may only end a code (F32* for F32 and every code under it)"]
    return []


def _service_code_problems(fw: Framework, code: str, org: Organisation) -> list[tuple[tuple[Any, ...], str]]:
    """An organisation's local hospital service codes: each of an HL7 v2 system it has, each to a national
    code or a sensitive category (a local code may make a visit more protected, never less)."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    hl7 = sorted(name for name, fmt in org.systems.items() if fmt == "hl7v2")
    for system, codes in org.service_codes.items():
        path = ("organisations", code, "service_codes", system)
        if system not in hl7:
            problems.append((path, f"'{system}' is not an HL7 v2 system of {code} (its systems list "
                                   f"{', '.join(hl7) or 'none'}): name the sending application as MSH-3 does"))
        for local, target in codes.items():
            if not local or local != local.strip() or "|" in local:
                problems.append(((*path, local), f"'{local}' is not a code as PV1-10 sends it"))
            system_url, bar, national = target.rpartition("|")
            if target in fw.sensitive_categories:
                continue
            if target in fw.categories:
                problems.append(((*path, local), f"'{target}' is not a sensitive category ("
                                 f"{', '.join(fw.sensitive_categories)}): a local code may only make a visit "
                                 "more protected, so map it to the national code it means"))
            elif not bar or not national.strip() or not system_url.startswith(("http://", "https://", "urn:")):
                problems.append(((*path, local), f"'{target}' is neither a sensitive category nor a national code "
                                 "written system|code (https://fhir.nhs.uk/CodeSystem/"
                                 "NHSDataModelAndDictionary-treatment-function|360)"))
    return problems


def parse_framework(text: str, source: str = "<framework>") -> Framework:
    """Parse and check a framework document; raise FrameworkError listing every problem found, in the file's
    order: the schema's, then the cross-checks' on what of the file did validate."""
    try:
        raw, lines = read_yaml(text, "the framework")
    except YamlProblem as exc:
        raise FrameworkError(exc.problems, source) from exc
    data = _with_names(raw)
    problems: list[tuple[tuple[Any, ...], str]] = []
    try:
        fw = Framework.model_validate(data)
    except ValidationError as exc:
        problems = [(tuple(err["loc"]), err["msg"] + (_NOT_A_NUMBER if isinstance(err["input"], bool)
                                                      and err["type"] in ("int_type", "float_type") else ""))
                    for err in exc.errors()]
        fw = _valid_parts(data)
    problems += _cross_checks(fw, data)
    if problems:
        problems.sort(key=lambda problem: line_of(lines, problem[0]) or 0)
        raise FrameworkError([f"{where(lines, path)}: {message}" for path, message in problems], source)
    return fw


_NOT_A_NUMBER = " (YAML reads yes, no, on, off, true and false as true or false, not a number)"


def load_framework(path: Path | None = None) -> Framework:
    """Load the framework named by SHAREDCARE_FRAMEWORK (or `path`), checked."""
    path = path or load_settings().framework_path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FrameworkError([f"cannot read the framework file ({exc.strerror})"], str(path)) from exc
    return parse_framework(text, str(path))
