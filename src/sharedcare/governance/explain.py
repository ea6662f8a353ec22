"""The framework in plain words, for citizens, GP partners and Caldicott guardians (journey 9).

Pure functions over the framework: `sharedcare framework explain` prints them as tables, and the
patient portal can show the same sentences.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from sharedcare.governance.classify import service_category
from sharedcare.governance.consent import Provision
from sharedcare.governance.consent_fhir import UK_TIME
from sharedcare.governance.framework import Agreement, Framework, Role
from sharedcare.governance.policy import UNNAMED_SERVICE

if TYPE_CHECKING:  # only for the type: the framework in words needs no store
    from sharedcare.governance.gateway import RecordView

TIER_WORDS = {
    0: "nothing",
    1: "only that a service holds information, and how to contact it",
    2: "a coded summary, without free text: no notes, documents or titles, and not what a service typed rather "
       "than coded (said to be not shown)",
    3: "everything, including letters and free-text notes",
}
# What a role sees of its own organisation's information, said after TIER_WORDS (policy.py rule e): in full
# in a category the role sees at all, never in one it sees nothing of.
OWN_ORGANISATION_WORDS = {
    0: ", not even what their own organisation recorded",
    1: "; in full what their own organisation recorded",
    2: "; in full what their own organisation recorded",
    3: "",
}
BASIS_WORDS = {
    "explicit-consent": "the patient is present and agrees",
    "implied-consent": "the patient is not present (or cannot say) and the record is needed for their care",
    "emergency": "an emergency where the patient cannot consent (\"break glass\")",
}


# A data category and an organisation's kind as a reader sees them: the portal's pages and the FHIR API's
# notice both say these.
CATEGORY_LABELS = {
    "demographics": "Demographics", "summary": "Summary", "encounters": "Encounters",
    "diagnostics": "Diagnostics", "hospital_detail": "Hospital detail", "community": "Community care",
    "mental_health": "Mental health", "social_care": "Social care", "safeguarding": "Safeguarding",
    "sexual_health": "Sexual health",
}

KIND_LABELS = {
    "icb": "Integrated care board", "gp": "GP practice", "acute": "Hospital", "community": "Community services",
    "mental_health": "Mental health service", "ambulance": "Ambulance service", "social_care": "Social care",
    "hospice": "Hospice", "pharmacy": "Pharmacy", "care_home": "Care home",
}


# Why a reader's view of a record leaves something out, by the decision's rule (policy.py; an
# always-withheld rule by its id): never what, nor how much. The portal's "Some information is not shown"
# and the FHIR API's OperationOutcome in each Bundle of a patient's data (api/fhir.py) both say these,
# as `not_shown` chooses them.
WITHHELD_LABELS = {
    "tier": "information your role does not include",
    "tier-1-headline": "details your role sees only as 'a service is involved'",
    "source-agreement": "information from organisations whose sharing agreement is not in force",
    "objection-all": "information the patient has asked not to be shared",
    "objection-org": "information from an organisation the patient has objected to",
    "consent-deny": "information the patient has chosen not to share",
    "third-party": "information about other people",
    "confidential": "documents the source marked restricted",
    "very-restricted": "records the source marked very restricted",
    "scope": "information this app's access does not include",  # the API's alone: a token's SMART scopes
}

# The same, as a patient reads it about their own record.
CITIZEN_WITHHELD_LABELS = {
    **WITHHELD_LABELS,
    "tier": "any safeguarding records (these are never shown online, so that they cannot put anyone at risk)",
    "source-agreement": "information from organisations that are not sharing at the moment",
    "confidential": "documents the organisation that wrote them marked restricted (ask them for a copy)",
    "very-restricted": "records the organisation that wrote them marked very restricted (ask them about these)",
}


# What each reason means, for the CodeSystem the API publishes of them (api/fhir.py): when the decision
# point gives it. An always-withheld rule's meaning is the framework's own (`explain`).
WITHHELD_DEFINITIONS = {
    "tier": "The reader's role sees nothing of some category of information, whoever recorded it (their own "
            "organisation too). Said on every read by such a role, whether or not this record holds any.",
    "tier-1-headline": "The reader's role sees some of this record only as a sign that a service is involved, "
                       "with its contact details.",
    "source-agreement": "Information from an organisation whose information-sharing agreement is not in force "
                        "(suspended, ended or not yet signed) is left out.",
    "objection-all": "The patient objected to all sharing of their record: only the reader's own organisation's "
                     "information is shown.",
    "objection-org": "The patient objected to an organisation's information being shared: it is left out.",
    "consent-deny": "A deny provision of the patient's Consent (who reads, who holds it, purpose, type, category "
                    "or period) leaves information out.",
    "scope": "The access token's SMART scopes leave out some resource types: the answer holds only the types "
             "they allow.",
}


@dataclass(frozen=True)
class WithheldReason:
    """One reason a view can leave something out: its code (the decision's rule), the words staff read, the
    words a patient reads about their own record, and what it means."""

    code: str
    words: str
    patient_words: str
    definition: str


def withheld_reasons(fw: Framework) -> list[WithheldReason]:
    """Every reason `not_shown` (or the API's `scope`) can give under this framework, in code order: the
    policy's withholding rules and the framework's always-withheld rules."""
    rules = {rule.id: rule for rule in fw.always_withheld}
    codes = sorted(set(WITHHELD_LABELS) | set(rules))
    return [WithheldReason(code, _words(code, WITHHELD_LABELS, fw), _words(code, CITIZEN_WITHHELD_LABELS, fw),
                           WITHHELD_DEFINITIONS.get(code)
                           or "Never shared outside the organisation that recorded it: "
                           + rules[code].explain[:1].lower() + rules[code].explain[1:] + ".")
            for code in codes]


def _words(why: str, words: dict[str, str], fw: Framework) -> str:
    """A reason in words: its label, else the always-withheld rule's own `explain` (a rule the labels do not
    name yet), else its code."""
    if why in words:
        return words[why]
    rule = next((r for r in fw.always_withheld if r.id == why), None)
    return rule.explain[:1].lower() + rule.explain[1:] if rule is not None else why


def withheld_labels(role: Role | None) -> dict[str, str]:
    """The words for what a reader of this role was not shown: a patient reads them about their own record."""
    return CITIZEN_WITHHELD_LABELS if role is not None and role.citizen else WITHHELD_LABELS


def role_limited(role: Role | None, fw: Framework) -> bool:
    """Whether the role sees nothing of some category (the `tier` reason)."""
    return role is not None and any(role.tier(category) <= 0 for category in fw.categories)


def not_shown(withheld: Iterable[str], role: Role | None, fw: Framework) -> dict[str, str]:
    """The reasons a reader is told its view of a record leaves something out (the decision's `withheld`
    rules), each in its words, by code. `tier` is the role's, not the record's: said on every read by a
    role that sees nothing of some category, whether or not this record holds any, and never otherwise.
    Said only when something of this record was withheld, it named the category for most roles (a
    paramedic's, a practice or district nurse's only such category is sexual health; a patient's,
    safeguarding)."""
    reasons = set(withheld) - {"tier"}
    if role_limited(role, fw):
        reasons.add("tier")
    return _worded(reasons, role, fw)


@dataclass(frozen=True)
class Service:
    """An organisation involved in the person's care, what it shares with this user, and its contact."""

    code: str
    name: str
    kind: str
    phone: str
    shared: list[str]  # categories shown in the record
    involved_only: list[str]  # categories this user sees only as "a service is involved"


def services(view: RecordView, fw: Framework, role: Role | None) -> list[Service]:
    """The services involved in this view of a record, those sharing something with the reader first: the
    portal's list of services, and whom the API's notice says to ask about what is shown only as involved.

    A service known to the reader only by its record of who the person is (nothing else shared or
    headlined) is listed only if the role may know of that kind of service (tier 1 or more of its category):
    a mental health trust's Patient record must not tell a role that sees nothing of mental health that
    the trust is involved."""
    shared: dict[str, set[str]] = {}
    for served in view.resources:
        shared.setdefault(served.source_org, set()).add(served.category)
    headline: dict[str, set[str]] = {}
    for h in view.headlines:
        headline.setdefault(h.organisation, set()).add(h.category)
    out = []
    for code in sorted(set(shared) | set(headline) | set(view.sources)):
        org = fw.organisation(code)
        if code not in shared and code not in headline and not _may_know_of(org.kind if org else "", role):
            continue
        out.append(Service(code=code, name=org.name if org else code or UNNAMED_SERVICE,
                           kind=KIND_LABELS.get(org.kind, "") if org else "",
                           phone=org.phone if org else "",
                           shared=sorted(CATEGORY_LABELS.get(c, c) for c in shared.get(code, set())),
                           involved_only=sorted(CATEGORY_LABELS.get(c, c) for c in headline.get(code, set()))))
    return sorted(out, key=lambda s: (not s.shared, s.name))


def _may_know_of(kind: str, role: Role | None) -> bool:
    """Whether a role may learn that a service of this kind holds something about the person."""
    category = service_category(kind)
    return category is None or (role is not None and role.tier(category) >= 1)


def patient_not_shown(withheld: Iterable[str], masked: bool, role: Role | None, fw: Framework) -> dict[str, str]:
    """The reasons a person's combined Patient (a read by id) leaves something out, each in `not_shown`'s
    words, by code: the rules that withheld any of their source Patient records, and `tier` when its
    demographics are from a record the role sees below full detail (`masked`). Unlike `not_shown`'s, `tier`
    here is said only when the role's tier narrowed this Patient: a role that sees every demographic is told
    nothing on a Patient with nothing withheld, whatever else of the record it does not see. Each is a
    reason the same reader's notice on the whole record gives too (a Patient's withholding rule is the
    record's; `tier` is the role's): nothing about this person the notice would not say."""
    return _worded(set(withheld) | ({"tier"} if masked else set()), role, fw)


def _worded(reasons: set[str], role: Role | None, fw: Framework) -> dict[str, str]:
    """Each reason in the words this role reads, by code, in code order."""
    words = withheld_labels(role)
    return {why: _words(why, words, fw) for why in sorted(reasons)}


@dataclass(frozen=True)
class RoleCategory:
    role: str
    role_label: str
    category: str
    category_label: str
    tier: int
    sees: str


def role_rows(fw: Framework, role: str | None = None) -> list[RoleCategory]:
    """What each role (or one role) sees in each category, in words."""
    names = [role] if role else list(fw.roles)
    rows = []
    for name in names:
        definition = fw.roles[name]
        if "direct-care" not in definition.purposes:
            continue
        for category, label in fw.categories.items():
            tier = definition.tier(category)
            rows.append(RoleCategory(name, definition.label, category, label, tier,
                                     TIER_WORDS[tier] + OWN_ORGANISATION_WORDS[tier]))
    return rows


def agreement_in_words(agreement: Agreement) -> str:
    """An agreement's status and dates as the file records them ("signed 2026-01-20, from 2026-02-01 to
    2029-01-31")."""
    dates = " ".join([f"from {agreement.starts}"] * bool(agreement.starts)
                     + [f"{'to' if agreement.starts else 'until'} {agreement.ends}"] * bool(agreement.ends))
    return f"{agreement.status}{f' {agreement.signed}' if agreement.signed else ''}{f', {dates}' if dates else ''}"


def in_force_in_words(agreement: Agreement, today: date) -> str:
    """Whether an agreement is in force today (`Agreement.in_force`, as the decision point asks) and, if not,
    why and what that means: a status of "signed" alone does not say (one that has ended still does)."""
    if agreement.in_force(today):
        return "yes"
    why = (agreement.status if agreement.status != "signed"
           else f"starts {agreement.starts}" if agreement.starts and today < agreement.starts
           else f"ended {agreement.ends}")
    return f"no ({why})"  # the first rule says what that means: its staff open no record, no one sees its information


def roles_seeing_nothing(fw: Framework, today: date, role: str | None = None) -> dict[str, str]:
    """The staff roles (or one) whose users all belong to organisations without an agreement in force today,
    each with a sentence saying so: what `role_rows` says such a role sees, it would see, and today sees
    nothing (care home staff while the care home's agreement is a draft)."""
    out = {}
    for name in [role] if role else list(fw.roles):
        homes = sorted({user.organisation for user in fw.users.values() if user.role == name})
        if not homes or fw.roles[name].citizen or any(fw.organisations[code].agreement.in_force(today)
                                                      for code in homes):
            continue
        listed = ", ".join(f"{code} {fw.organisations[code].name}" for code in homes)
        out[name] = (f"{fw.roles[name].label}: currently see nothing, as no organisation of theirs ({listed}) has a "
                     "sharing agreement in force today.")
    return out


# What a role that never opens a record for someone's care works with, by purpose: `framework explain`
# would otherwise say nothing at all about the IG officer, the analyst or the patient.
_PURPOSE_ROLE_WORDS = {
    "governance": "opens no record for care; sees the audit log, the agreements and patients' recorded choices, "
                  "and the name, date of birth and NHS number of a patient whose record a review item is about, "
                  "never anything clinical",
    "secondary-use": "opens no record; receives pseudonymised extracts for planning and research (the last rule "
                     "above)",
}


def other_roles_in_words(fw: Framework, role: str | None = None) -> list[str]:
    """The roles `role_rows` leaves out (those without direct care), one sentence each."""
    lines = []
    for name in [role] if role else list(fw.roles):
        definition = fw.roles[name]
        if "direct-care" in definition.purposes:
            continue
        words = [_PURPOSE_ROLE_WORDS[p] for p in definition.purposes if p in _PURPOSE_ROLE_WORDS]
        if "self-access" in definition.purposes:
            hidden = [fw.categories[c].lower() for c in fw.categories if definition.tier(c) == 0]
            words.append("sees their own record and everyone who looked at it"
                         + (f", except {'; '.join(hidden)}" if hidden else "")
                         + ", and what the rules above never share")
        if words:
            lines.append(f"{definition.label}: {'; '.join(words)}.")
    return lines


# Each kind of item a record holds (its FHIR resource type), in the plural, as a reader counts them: the IG
# officer's audit search says what a look showed in these words ("test results and measurements 50,
# medicines 11"), and the framework's safety-critical types are named in them.
RECORD_TYPE_WORDS = {
    "Patient": "personal details", "Condition": "problems and diagnoses", "MedicationStatement": "medicines",
    "AllergyIntolerance": "allergies", "Encounter": "appointments and stays",
    "Observation": "test results and measurements", "DiagnosticReport": "test reports", "Procedure": "procedures",
    "Immunization": "immunisations", "CarePlan": "care plans", "DocumentReference": "letters and documents",
}
_TYPE_WORDS = {**RECORD_TYPE_WORDS, "Condition": "diagnoses"}


def rules_in_words(fw: Framework) -> list[str]:
    """The rules every role works under, in the order the decision point applies them."""
    lines = [
        "Only staff of organisations with a signed sharing agreement in force can look at records, and only "
        "those organisations' information is shown. Suspending an agreement takes effect at once.",
        "Before opening a record, staff record why: " + "; ".join(
            f"{basis.replace('-', ' ')} ({BASIS_WORDS.get(basis, basis)}, lasts {rule.hours:g} hours"
            + (", only for " + ", ".join(r.label for r in fw.roles.values() if rule.permission in r.permissions)
               if rule.permission else "")
            + (", reviewed by the information governance team)" if rule.review else ")")
            for basis, rule in fw.basis.items()) + ".",
        "A patient can object to all sharing, or to one organisation seeing their record; their objection "
        "takes effect at once. Staff still see what their own organisation recorded, as the next rule says.",
        "Staff see everything their own organisation recorded, but only in the kinds of information their role "
        "may see at all: what a role sees \"nothing\" of below stays hidden from it, even when its own "
        "organisation recorded it.",
    ]
    writers = [r.label for r in fw.roles.values() if r.writes]
    lines.append("Only " + (", ".join(writers) if writers else "no role") + " may add to or change the record "
                 "(as their own organisation, through its systems); apps staff approve only read.")
    if fw.sensitive_codes_explain:
        kinds = "; ".join(f"{category.replace('_', ' ')}: {words}"
                          for category, words in fw.sensitive_codes_explain.items())
        lines.append("Some conditions are sensitive information whoever recorded them (a GP or a hospital as much as "
                     f"a specialist service), and are shown to each role as that kind of information: {kinds}.")
    mapped = [org.name for org in fw.organisations.values() if org.service_codes]
    if mapped:
        lines.append("A hospital visit is the kind of information its clinic is (a sexual health clinic's visit is "
                     "sexual health), whether the hospital names the clinic by a national code or by its own: "
                     f"{', '.join(mapped)} list what their own codes mean, and a visit with a code not listed is "
                     "held back until it is.")
    if fw.safety_critical_types:
        kinds = ", ".join(_TYPE_WORDS.get(t, t) for t in fw.safety_critical_types)
        lines.append(f"For safety, {kinds} recorded by a mental health, community or social care service are "
                     "shown to clinical staff as coded entries without notes (\"alerts\" below), not only as a "
                     "sign that the service is involved, unless they name a sensitive condition.")
    lines.append("Staff whose role sees nothing of a specialist service's kind of information (mental health, say) "
                 "are never told that service holds a record: what they do see of it, or of it in other "
                 "records, names only \"a specialist service\".")
    lines += [f"Never shared outside the organisation that recorded it: {rule.explain.lower()}."
              for rule in fw.always_withheld]
    lines.append("Every look at a record is recorded; patients can see who looked, when and why. The information "
                 "governance team is told of anyone who, in an hour, opens the records of more than "
                 f"{fw.review.patients_per_hour} people, or whose searches find more than "
                 f"{fw.review.people_found_per_hour} people.")
    if "secondary-use" in fw.purposes:
        sensitive = ", ".join(c.replace("_", " ") for c in fw.sensitive_categories)
        lines.append("Planning and research use pseudonymised data only (no names, NHS numbers, addresses or full "
                     "dates of birth), respect the national data opt-out and objections to sharing, and never "
                     f"include {sensitive} information.")
        for name, purpose in sorted(fw.purposes.items()):
            if not purpose.identifiable:
                lines.append(f"In extracts for {name}, no combination of sex, birth, postcode district, practice "
                             f"and ethnic category is shared by fewer than {purpose.k} people: it is made coarser, "
                             "else left out.")
    return lines



_PURPOSE_WORDS = {"TREAT": "for your care", "ETREAT": "in an emergency (\"break glass\")",
                  "HOPERAT": "to plan services", "HRESCH": "for research"}


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def provision_in_words(p: Provision, fw: Framework, nested: bool = False) -> str:
    """One Consent provision as a sentence a patient can check: what, held by whom, from whom, when, why
    (`nested`: an exception, which narrows what its parent covers: "it")."""
    def names(codes: frozenset[str]) -> str:
        return _either([fw.organisations[c].name if c in fw.organisations else c for c in sorted(codes)])

    what = (_either([fw.categories.get(c, c).lower() for c in sorted(p.codes)]) if p.codes
            else "it" if nested else "all your information")
    parts = [("hide " if p.type == "deny" else "show ") + what]
    if p.classes:
        parts.append(f"(only {_either(sorted(p.classes))} records)")
    if p.sources:
        parts.append(f"recorded by {names(p.sources)}")
    parts.append(f"{'from' if p.type == 'deny' else 'to'} {names(p.recipients) if p.recipients else 'everyone'}")
    if p.purposes:
        parts.append("when it is used " + _either([_PURPOSE_WORDS[c] for c in sorted(p.purposes)]))
    if p.start is not None:
        parts.append(f"from {p.start.astimezone(UK_TIME):%d %B %Y}")
    if p.end is not None:
        parts.append(f"until {p.end.astimezone(UK_TIME):%d %B %Y}")
    sentence = " ".join(parts)
    if p.provisions:
        sentence += "; except: " + "; ".join(provision_in_words(child, fw, nested=True) for child in p.provisions)
    return sentence if nested else sentence[0].upper() + sentence[1:]
