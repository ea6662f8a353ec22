"""The UK Core rules that matter at ingest: identifier systems and values, SNOMED CT and dm+d codes, required codes.

The structural check (fhir.resources) and the core invariants know nothing of UK Core; these rules add what
UK Core R4 (STU3) fixes for the types the record keeps, and no more (docs/architecture.md, "UK Core rules",
says where each rule comes from):

- an identifier under the NHS number system (`https://fhir.nhs.uk/Id/nhs-number`, UKCore-Patient's nhsNumber
  slice) holds a valid NHS number (ten digits, modulus 11), wherever it stands (a Patient's, or a reference's);
- an NHS number is sent under that system: one under a legacy system (the NHS number OID, Care Connect's
  `http://fhir.nhs.net/Id/nhs-number`) is refused, not rewritten, naming the system to use;
- an ODS organisation or site code (`https://fhir.nhs.uk/Id/ods-organization-code`, `.../ods-site-code`) is shaped
  as ODS codes are: 3 to 8 capital letters and digits (the NHS Data Dictionary's coding frames);
- a coding whose system is SNOMED CT or dm+d carries a code (UK Core's snomedCT slices: code 1..1), and that code
  is a concept's SCTID (6 to 18 digits, no leading zero, partition identifier 00 or 10, a Verhoeff check digit;
  dm+d ids are SCTIDs) or a post-coordinated expression of them;
- AllergyIntolerance.code is present (1..1 in UKCore-AllergyIntolerance; the other required codes, Observation.code,
  DiagnosticReport.code, Immunization.vaccineCode and MedicationStatement.medication[x], are 1..1 in base FHIR and
  already refused by the structural check).

Local codes under other systems (a laboratory's own OBX-3 codes) are not touched. Problems come back located as the
invariants' do: `Condition.code.coding[0].code: UK Core SNOMED CT: why ('value')`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from stdnum import verhoeff  # python-stdnum: the Verhoeff check digit, as SNOMED CT's identifiers use it

from sharedcare.fhir.uk_core import DMD, ODS_SYSTEM, SNOMED
from sharedcare.identity.nhs_number import NHS_NUMBER_SYSTEM, is_valid

ODS_SITE_SYSTEM = "https://fhir.nhs.uk/Id/ods-site-code"
# Systems that have carried NHS numbers before UK Core (the HL7 OID, in both spellings, and Care Connect STU3's URI)
LEGACY_NHS_NUMBER_SYSTEMS = frozenset({
    "urn:oid:2.16.840.1.113883.2.1.4.1", "2.16.840.1.113883.2.1.4.1", "http://fhir.nhs.net/Id/nhs-number",
})
_ODS_CODE = re.compile(r"[A-Z0-9]{3,8}")
_CODE_SYSTEMS = {SNOMED: "SNOMED CT", DMD: "dm+d"}
# UK Core's required codes beyond base FHIR's (which the structural check already enforces)
REQUIRED = {"AllergyIntolerance": ("code",)}
# A post-coordinated expression (SNOMED CT compositional grammar): focus concepts joined by +, refined after :
_EXPRESSION = re.compile(r"[:+=]")
_TERM = re.compile(r"\|[^|]*\||#-?[\d.]+|\"[^\"]*\"")  # |terms|, #numbers and "strings" hold no identifiers
_EXPRESSION_SYNTAX = re.compile(r"[\d\s:+=,{}()]*")
MAX_DEPTH = 64


def uk_core_problems(resource: dict[str, Any]) -> list[str]:
    """Every UK Core rule the resource breaks, located (empty when none)."""
    resource_type = str(resource.get("resourceType"))
    problems = [f"{resource_type}.{element}: UK Core: {element} is required (1..1 in UKCore-{resource_type})"
                for element in REQUIRED.get(resource_type, ()) if element not in resource]
    if _breaks(resource, 0):  # most resources break nothing: only then is the walk done again, spelling out paths
        _locate(resource, resource_type, problems, 0)
    return problems


def _breaks(node: dict[str, Any], depth: int) -> bool:
    """Whether an element in the node breaks a rule. Runs after the structural check, so lists hold no lists."""
    if depth > MAX_DEPTH:
        return False  # the invariants refuse a resource nested this deep
    system = node.get("system")
    if type(system) is str and system in _RULES and _RULES[system](node, system) is not None:
        return True
    for value in node.values():
        if type(value) is dict:
            if _breaks(value, depth + 1):
                return True
        elif type(value) is list:
            for item in value:
                if type(item) is dict and _breaks(item, depth + 1):
                    return True
    return False


def _locate(node: Any, where: str, problems: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(node, list):
        for index, item in enumerate(node):
            _locate(item, f"{where}[{index}]", problems, depth + 1)
        return
    if not isinstance(node, dict):
        return
    system = node.get("system")
    if type(system) is str and system in _RULES:
        found = _RULES[system](node, system)
        if found is not None:
            problems.append(f"{where}{found[0]}: {found[1]}")
    for key, value in node.items():
        if isinstance(value, (dict, list)):
            _locate(value, f"{where}.{key}", problems, depth + 1)


Found = tuple[str, str] | None  # (the element within the node, the rule and why), or None when it holds


def _nhs_number(node: dict[str, Any], system: str) -> Found:
    value = node.get("value")
    if type(value) is str and not is_valid(value):
        return ".value", ("UK Core nhsNumber: the NHS number fails the modulus 11 check (ten digits, the last "
                          "a check digit)")  # not quoted: a reason is listed to operators and returned to writers
    return None


def _legacy_nhs_number(node: dict[str, Any], system: str) -> Found:
    return ".system", (f"UK Core nhsNumber: an NHS number is identified by {NHS_NUMBER_SYSTEM}, not the legacy "
                       f"'{system}'; send it under that system")


def _ods_code(node: dict[str, Any], system: str) -> Found:
    value = node.get("value")
    if type(value) is str and not _ODS_CODE.fullmatch(value):
        kind = "organisation" if system == ODS_SYSTEM else "site"
        return ".value", (f"UK Core ODS {kind} code: '{value[:40]}' is not shaped as an ODS code "
                          "(3 to 8 capital letters and digits)")
    return None


def _concept(node: dict[str, Any], system: str) -> Found:
    """A Coding in SNOMED CT or dm+d (an Identifier under these, with a value, is not a Coding)."""
    if "value" in node:
        return None
    code = node.get("code")
    if code is None:
        return "", f"UK Core {_CODE_SYSTEMS[system]}: a coding in this system carries a code (code 1..1)"
    problem = code_problem(code) if type(code) is str else None
    return (".code", f"UK Core {_CODE_SYSTEMS[system]}: {problem} ('{code[:40]}')") if problem else None


_RULES = {NHS_NUMBER_SYSTEM: _nhs_number, **dict.fromkeys(LEGACY_NHS_NUMBER_SYSTEMS, _legacy_nhs_number),
          ODS_SYSTEM: _ods_code, ODS_SITE_SYSTEM: _ods_code, SNOMED: _concept, DMD: _concept}


def code_problem(code: str) -> str | None:
    """Why a SNOMED CT (or dm+d) code is not a concept's identifier nor an expression of them; None when it is."""
    # a feed sends the same few thousand codes again and again: the verdicts on short ones are kept (bounded)
    return _code_problem(code) if len(code) <= 64 else _code_problem.__wrapped__(code)


@lru_cache(maxsize=1 << 14)
def _code_problem(code: str) -> str | None:
    if code.isascii() and code.isdigit():
        return sctid_problem(code)
    if _EXPRESSION.search(code):
        bare = _TERM.sub(" ", code)
        if not _EXPRESSION_SYNTAX.fullmatch(bare):
            return "not a concept id nor a SNOMED CT expression of concept ids"
        for concept in re.findall(r"\d+", bare):
            problem = sctid_problem(concept)
            if problem:
                return f"the expression's {concept}: {problem}"
        return None
    return "not an SCTID (digits only) nor a SNOMED CT expression"


def sctid_problem(sctid: str) -> str | None:
    """Why a string of digits is not a concept's SCTID (SNOMED CT's identifier rules); None when it is."""
    if not 6 <= len(sctid) <= 18:
        return f"an SCTID has 6 to 18 digits, not {len(sctid)}"
    if sctid[0] == "0":
        return "an SCTID has no leading zero"
    partition = sctid[-3:-1]
    if partition not in ("00", "10"):
        kind = {"01": "a description", "11": "a description", "02": "a relationship", "12": "a relationship"}.get(
            partition, "no known component")
        return f"partition identifier {partition} is {kind}'s, not a concept's (00 or 10)"
    if partition == "10" and len(sctid) < 11:
        return "an extension's SCTID (partition 10) carries a 7-digit namespace: at least 11 digits"
    if not verhoeff.is_valid(sctid):
        return "the check digit fails (Verhoeff)"
    return None
