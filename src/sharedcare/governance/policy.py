"""The one policy decision point: a pure function from (who, why, whose record, what) to a decision.

`decide` does no I/O, so it can be tested as a full matrix and is deterministic. The gateway
(`gateway.py`) gathers its inputs, calls it, writes the audit event and returns only what it released.

Order of rules. Whole-request rules, first deny wins:
  1. deny-unknown-actor     no such user or role
     deny-not-own-record    a citizen may read only their own record (and needs no organisation or basis;
                            their objections do not hide their own record from them); answered as a
                            missing patient, so that a citizen cannot learn which ids are stored
  2. deny-actor-agreement   the user's organisation has no signed agreement in force
  3. deny-purpose           the role may not act for this purpose
     deny-identifiable      the purpose allows pseudonymised data only (secondary use), never a record
  4. deny-objection-org     the patient objected to the user's organisation seeing their record (before
                            the basis: the gateway answers it as a missing patient, TRUST AC3, and an
                            answer "record a basis" would tell the caller the person is stored)
  5. deny-no-basis          direct care needs a point-of-care basis for this user and patient
Then each item, first match withholds it:
  e0. tier                  what the role never sees (rule e's tier 0, a Patient of a service it may not
                            know of), whatever else holds: the notice names each rule that withheld
                            something, and a-d named for such an item would tell what `tier` hides
  a. source-agreement       its source organisation has no signed agreement in force
  b. objection-all          the patient objected to sharing (the user's own organisation's data stays)
  c. objection-org          the patient objected to sharing with its source organisation
  c2. consent-deny          a deny provision of the patient's Consent matches it (the reading organisation,
                            the organisation holding it, purpose of use, resource type, category, period)
                            and no exception nested in it re-permits it (consent.py); the user's own
                            organisation's data stays. A Patient from a service with a category of its own
                            is asked about that category too (`consent_categories`): hiding mental health
                            hides that the mental health trust is involved
  d. always-withheld rules  a security label the framework always withholds (third party, restricted),
                            except from the organisation that recorded it
  e. tier                   the role's tier for its category: 0 nothing, 1 a headline only (that a
                            service is involved, and its contact), 2 a coded summary without free text,
                            3 everything. A user's own organisation's data is shown at tier 3 in a
                            category the role sees at all (tier 1 or more): they hold it in their own
                            system already. Tier 0 means never, whoever recorded it (a receptionist
                            does not read her practice's consultations through the shared record).
                            A person's record of who they are (Patient) from a service with a category
                            of its own (mental health, social care, community) is withheld by tier from
                            a role that sees nothing of that category: it would tell that the service
                            is involved.
Anything not permitted above is denied: there is no rule that permits by default.

Secondary use (`decide_secondary`: planning, research; pseudonymised extracts only) has its own order.
Whole-request rules, first deny wins:
  1. deny-unknown-actor     no such user or role; a citizen never exports (deny-purpose)
  2. deny-actor-agreement   the user's organisation has no signed agreement in force
  3. deny-purpose           the role may not act for this purpose, or the purpose is identifiable
Then the person, first deny excludes them and all their data:
  4. deny-opt-out           the national data opt-out / the person's opt-out of secondary use
  5. deny-objection-all     the person objected to all sharing
     deny-objection-org     the person objected to the exporting user's organisation (as direct care refuses
                            its users the record)
Then each item, first match withholds it (no own-organisation exception: an analyst holds nothing):
  a. source-agreement, objection-org, consent-deny (a service's Patient asked about its category too),
     always-withheld rules, as for direct care
  b. sensitive-category     the framework's sensitive categories never go to secondary use
  c. tier                   the role's tier for its category is below 2 (a coded summary)
What is released is pseudonymised by `pseudonymise.py` before it leaves, which keeps less than tier 2.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property, lru_cache
from operator import attrgetter
from typing import Any

from sharedcare.governance.classify import at_tier, service_category
from sharedcare.governance.consent import SECONDARY_USE, Ask, Choices, purposes_of_use
from sharedcare.governance.framework import Agreement, Framework, Role

# The source a role is given for what it sees of a service it may not know of (`may_know_of_service`)
UNNAMED_SERVICE = "A specialist service"


@dataclass(frozen=True)
class Actor:
    username: str
    role: Role | None
    organisation: str
    person_id: str | None = None  # set for a citizen: the one record they may read


@dataclass(frozen=True)
class ActiveBasis:
    basis: str
    reason: str
    expires_at: datetime


@dataclass(frozen=True, eq=False, slots=True)
class Alike:
    """What rules a-e read of an item: items alike in these are decided together. One object per
    combination (`Item.alike`), compared and hashed by identity: grouping a large record's items is then
    a dictionary look-up by address per item, not a comparison of their labels' sets. (Two objects for
    one combination, once the look-up forgot one, are only two groups given the same verdict.)"""

    source_org: str
    category: str
    security: frozenset[str]
    resource_type: str  # a Consent provision may name it (its class)

    @property
    def patient(self) -> bool:
        return self.resource_type == "Patient"


@dataclass(frozen=True)
class Item:
    """One stored resource, as the decision point sees it."""

    resource: dict[str, Any]
    resource_type: str
    source_org: str
    category: str
    security: frozenset[str] = frozenset()

    @cached_property
    def alike(self) -> Alike:
        # made once per item: the gateway keeps an item with its cached document between requests
        return _alike(self.source_org, self.category, self.security, self.resource_type)


@lru_cache(maxsize=4096)
def _alike(source_org: str, category: str, security: frozenset[str], resource_type: str) -> Alike:
    return Alike(source_org, category, security, resource_type)


@dataclass(frozen=True)
class Request:
    actor: Actor
    purpose: str
    patient_id: str
    basis: ActiveBasis | None
    agreements: dict[str, Agreement]
    choices: Choices
    now: datetime

    @cached_property
    def purposes_of_use(self) -> frozenset[str]:
        """What a Consent provision's purpose is matched against (break glass is ETREAT)."""
        return purposes_of_use(self.purpose, self.basis is not None and self.basis.basis == "emergency")

    def consent_denies(self, source_org: str, resource_type: str, categories: Iterable[str]) -> bool:
        """Rule c2: whether the patient's Consent withholds such data, in any of `categories`
        (`consent_categories`), from this reader now."""
        return bool(self.choices.provisions) and any(self.choices.denies(
            Ask(self.actor.organisation, self.purposes_of_use, source_org, resource_type, category, self.now))
            for category in categories)


@dataclass(frozen=True)
class Released:
    item: Item
    tier: int
    as_stored: bool = False  # secondary use: the pseudonymiser, not the tier, shapes what leaves

    @cached_property
    def content(self) -> dict[str, Any]:
        """The item as its tier shows it, made when first asked for: the gateway serves a shape it made
        before from the same document and tier without asking (governance/content_cache.py)."""
        return self.item.resource if self.as_stored else at_tier(self.item.resource, self.tier)


@dataclass(frozen=True)
class Headline:
    """Tier 1: that a service holds information in a category, and whom to contact."""

    category: str
    organisation: str


@dataclass
class Decision:
    outcome: str  # permit | deny
    rule_id: str
    reason: str
    withheld: Counter[str] = field(default_factory=Counter)
    headlines: set[Headline] = field(default_factory=set)
    items: Sequence[Item] = field(default_factory=list)  # what `decide` was asked about, in order (may be shared)
    verdicts: dict[Alike, int | str] = field(default_factory=dict)  # per group alike: the tier, or why withheld
    unnamed: frozenset[str] = frozenset()  # services the patient's Consent hides are involved (`hidden_services`)

    @property
    def permitted(self) -> bool:
        return self.outcome == "permit"

    def tier_of(self, item: Item) -> int | None:
        """The tier `item` is released at; None if it is withheld or was not decided here (deny by default)."""
        verdict = self.verdicts.get(item.alike)
        return verdict if isinstance(verdict, int) else None

    @cached_property
    def released(self) -> list[Released]:
        """The released items at their tiers, in the order asked, made when first asked for: a large
        record's reader walks `items` with `tier_of` rather than make one object per item."""
        verdicts = self.verdicts
        return [Released(item, verdict) for item in self.items if isinstance(verdict := verdicts[item.alike], int)]


def _deny(rule_id: str, reason: str) -> Decision:
    return Decision("deny", rule_id, reason)


def check_request(req: Request, fw: Framework, require_basis: bool = True) -> Decision | None:
    """The whole-request rules (1-5); a denial, or None when the request may go on to the items.

    `require_basis=False` is for the steps before a basis can exist: finding a patient, recording it."""
    actor = req.actor
    if actor.role is None or actor.role.name not in fw.roles:
        return _deny("deny-unknown-actor", "unknown user or role")
    if actor.role.citizen:
        if actor.person_id is None or actor.person_id != req.patient_id:
            return _deny("deny-not-own-record", "you can see only your own record")
        if req.purpose not in actor.role.purposes:
            return _deny("deny-purpose", f"a {actor.role.label.lower()} may not act for purpose '{req.purpose}'")
        return None
    agreement = req.agreements.get(actor.organisation)
    if agreement is None or not agreement.in_force(req.now.date()):
        return _deny("deny-actor-agreement",
                     f"your organisation ({actor.organisation}) has no signed information-sharing agreement in force")
    purpose = fw.purposes.get(req.purpose)
    if purpose is None or req.purpose not in actor.role.purposes:
        return _deny("deny-purpose", f"the {actor.role.label} role may not act for purpose '{req.purpose}'")
    if not purpose.identifiable:
        return _deny("deny-identifiable", f"purpose '{req.purpose}' uses pseudonymised extracts only, not records")
    if actor.organisation in req.choices.object_orgs:
        return _deny("deny-objection-org", "the patient has objected to your organisation seeing their record")
    if require_basis and purpose.needs_basis and (req.basis is None or req.basis.expires_at <= req.now):
        return _deny("deny-no-basis", "record why you are opening this record (explicit consent, implied "
                                      "consent or emergency) before viewing it")
    return None


def check_secondary_request(actor: Actor, purpose: str, agreements: dict[str, Agreement], now: datetime,
                            fw: Framework) -> Decision | None:
    """The whole-request rules of secondary use (1-3); a denial, or None when the export may go on."""
    if actor.role is None or actor.role.name not in fw.roles:
        return _deny("deny-unknown-actor", "unknown user or role")
    if actor.role.citizen:
        return _deny("deny-purpose", "a patient may not export data for secondary use")
    agreement = agreements.get(actor.organisation)
    if agreement is None or not agreement.in_force(now.date()):
        return _deny("deny-actor-agreement",
                     f"your organisation ({actor.organisation}) has no signed information-sharing agreement in force")
    rule = fw.purposes.get(purpose)
    if rule is None or purpose not in actor.role.purposes:
        return _deny("deny-purpose", f"the {actor.role.label} role may not act for purpose '{purpose}'")
    if rule.identifiable:
        return _deny("deny-purpose", f"purpose '{purpose}' is identifiable: bulk export is for secondary use only")
    return None


def decide_secondary(req: Request, items: list[Item], fw: Framework) -> Decision:
    """Decide what of one person's record goes into a pseudonymised extract (rules 1-5, a-c above).

    Released content is the stored resource unchanged: the caller must pass it through the pseudonymiser,
    which removes free text, identifiers and references to people (more than tier 2 removes)."""
    denied = check_secondary_request(req.actor, req.purpose, req.agreements, req.now, fw)
    if denied is not None:
        return denied
    if req.choices.opt_out_secondary:
        return _deny("deny-opt-out", "the person opted out of their data being used for planning and research")
    if req.choices.object_all:
        return _deny("deny-objection-all", "the person objected to sharing their record")
    if req.actor.organisation in req.choices.object_orgs:
        return _deny("deny-objection-org", "the person objected to your organisation seeing their record")
    role = req.actor.role
    assert role is not None  # noqa: S101 - check_secondary_request denied a missing role
    decision = Decision("permit", "permit-secondary", f"{role.label}: pseudonymised extract for {req.purpose}")
    today = req.now.date()
    sensitive = set(fw.sensitive_categories)
    # rules a-c read only an item's source organisation, security labels, category and resource type:
    # decided once for each combination of the four in this person's record, not once per item
    reasons: dict[tuple[str, frozenset[str], str, str], str | None] = {}
    released, withheld = decision.released, decision.withheld
    for item in items:
        key = (item.source_org, item.security, item.category, item.resource_type)
        if key in reasons:
            why = reasons[key]
        else:
            why = reasons[key] = _secondary_reason(item, req, fw, today, sensitive, role)
        if why is not None:
            withheld[why] += 1
        else:
            released.append(Released(item, 2, as_stored=True))
    return decision


def _secondary_reason(item: Item, req: Request, fw: Framework, today: date, sensitive: set[str],
                      role: Role) -> str | None:
    """Rules a-c of secondary use for one item: the rule that withholds it, or None."""
    source = req.agreements.get(item.source_org)
    if source is None or not source.in_force(today):
        return "source-agreement"
    if item.source_org in req.choices.object_orgs:
        return "objection-org"
    # The extract may serve planning and research alike (SECONDARY_USE): it is asked once for each, and a deny
    # of either withholds. Asked once for both, a nested permit of one ("deny all, except for planning")
    # matched as the purposes merely overlapped and released the item to an extract that may serve research.
    if req.choices.provisions and any(
            req.choices.denies(Ask(req.actor.organisation, frozenset({purpose}), item.source_org, item.resource_type,
                                   category, req.now)) for purpose in sorted(SECONDARY_USE)
            for category in consent_categories(item.resource_type, item.source_org, item.category, fw)):
        return "consent-deny"
    if item.security:
        why = next((rule.id for rule in fw.always_withheld if rule.security in item.security), None)
        if why is not None:
            return why
    if item.category in sensitive:
        return "sensitive-category"
    if role.tier(item.category) < 2:
        return "tier"
    return None


def _source_reason(source_org: str, req: Request) -> str | None:
    """Rules a-c: they depend only on the item's source organisation."""
    own = source_org == req.actor.organisation
    source = req.agreements.get(source_org)
    if source is None or not source.in_force(req.now.date()):
        return "source-agreement"
    citizen = req.actor.role is not None and req.actor.role.citizen
    if req.choices.object_all and not own and not citizen:
        return "objection-all"
    if source_org in req.choices.object_orgs and not citizen:
        return "objection-org"
    return None


def _withhold_reason(alike: Alike, req: Request, fw: Framework, source_reason: str | None) -> str | None:
    if source_reason is not None:
        return source_reason
    own = alike.source_org == req.actor.organisation
    if (not own and not (req.actor.role is not None and req.actor.role.citizen)
            and req.consent_denies(alike.source_org, alike.resource_type,
                                   consent_categories(alike.resource_type, alike.source_org, alike.category, fw))):
        return "consent-deny"
    if alike.security and not own:
        for rule in fw.always_withheld:
            if rule.security in alike.security:
                return rule.id
    return None


def _verdict(alike: Alike, req: Request, fw: Framework, role: Role) -> str | int:
    """Rules a-e for items alike: the tier they are released at, or why they are withheld. What the role
    never sees (rule e's tier 0, and a Patient of a service it may not know of) is withheld as `tier` before
    rules a-d are asked: the notice names each rule that withheld something of the record, and a suspended
    agreement, an objection or a restricted label named there for such an item told the role what `tier`,
    said on every read, hides (that a mental health trust holds something: sixth security review)."""
    tier = role.tier(alike.category)
    own = alike.source_org == req.actor.organisation
    if tier <= 0 or (alike.patient and not own and not role.citizen
                     and not may_know_of_service(alike.source_org, fw, role)):
        return "tier"
    why = _withhold_reason(alike, req, fw, _source_reason(alike.source_org, req))
    if why is not None:
        return why
    if own:
        return 3
    if tier == 1 and not alike.patient:
        return "tier-1-headline"
    return tier


def may_know_of_service(source_org: str, fw: Framework, role: Role) -> bool:
    """Whether a role may learn that this organisation holds a record of the person. A service with a
    category of its own (a mental health trust, a council's social care) tells that it is involved by its
    record of who the person is alone: its identifier, its name as the source. A role that sees nothing of
    that category (tier 0) must not learn it from the Patient either (`explain.services` lists the care team
    by the same rule), nor from what it does see of the service's records (an allergy filed as `alerts`):
    the gateway serves those from an unnamed specialist service (`UNNAMED_SERVICE`)."""
    category = service_category_of(source_org, fw)
    return category is None or role.tier(category) >= 1


def service_category_of(source_org: str, fw: Framework) -> str | None:
    """The category of its own the organisation's kind of service has (a mental health trust's is mental
    health), if any: its record of who the person is tells that the person is in its care."""
    org = fw.organisation(source_org)
    return service_category(org.kind) if org else None


def consent_categories(resource_type: str, source_org: str, category: str, fw: Framework) -> tuple[str, ...]:
    """The categories rule c2 asks the patient's Consent about for an item: its own, and for a Patient from a
    service with a category of its own that category too. A Patient is demographics, but a mental health
    trust's tells that the trust is involved (what rule e withholds from a role that may not know of the
    service): "hide mental health from everyone" hides that as well, and a clinician is told only that the
    patient chose not to share something (HIGH 2 of the patient portal review, 2026-12-07)."""
    service = service_category_of(source_org, fw) if resource_type == "Patient" else None
    return (category,) if service is None or service == category else (category, service)


def hidden_services(req: Request, fw: Framework) -> frozenset[str]:
    """The services (ODS codes) whose involvement the patient's Consent hides from this reader: a provision
    denies the service's own category to them (rule c2 on its Patient). What the reader still sees of
    such a service (its allergy, filed as `alerts` so that it reaches whoever prescribes: HAZ-02) or a
    record of another organisation naming it is served as for a role that may not know of the service
    (`unnamed.py`, `UNNAMED_SERVICE`), so that "hide mental health from everyone" does not name the trust
    through them. Never the reader's own organisation, nor for a citizen reading their own record."""
    actor = req.actor
    if not req.choices.provisions or actor.role is None or actor.role.citizen:
        return frozenset()
    return frozenset(code for code in fw.organisations
                     if code != actor.organisation and (category := service_category_of(code, fw)) is not None
                     and req.consent_denies(code, "Patient", (category,)))


_ALIKE = attrgetter("alike")


def count_alike(items: Iterable[Item]) -> Counter[Alike]:
    """How many of `items` are alike in each way rules a-e read, in the order first seen (as `withheld`
    was always kept)."""
    return Counter(map(_ALIKE, items))


def decide(req: Request, items: Sequence[Item], fw: Framework, groups: Mapping[Alike, int] | None = None) -> Decision:
    """Decide one read of one patient's record: what is released, at what tier, and what is withheld.

    Rules a-e read only an item's source organisation, category, security labels and whether it is a
    Patient (`Item.alike`), so they are asked once per group of items alike in those, not once per item;
    the decision keeps a verdict per group (`Decision.tier_of`) and makes `released` only when asked.
    `groups`: `items` counted by `alike` in the order first seen, when the caller kept that count with the
    items (the gateway's record views); counted here otherwise."""
    denied = check_request(req, fw)
    if denied is not None:
        return denied
    role = req.actor.role
    assert role is not None  # noqa: S101 - check_request denied a missing role
    decision = Decision("permit", "permit-role-tiers", f"{role.label} tiers for {req.purpose}", items=items,
                        unnamed=hidden_services(req, fw))
    if groups is None:
        groups = count_alike(items)
    for alike, count in groups.items():
        verdict = decision.verdicts[alike] = _verdict(alike, req, fw, role)
        if isinstance(verdict, str):
            decision.withheld[verdict] += count
            if verdict == "tier-1-headline":
                decision.headlines.add(Headline(alike.category, alike.source_org))
    return decision
