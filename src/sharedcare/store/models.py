"""The store's tables (SQLAlchemy 2). The Alembic migrations in `migrations/` create exactly these.

Resources are kept as the FHIR JSON their source sent (after shaping), one row per source resource,
with provenance in columns. Clinical resources point at the *source* patient record they were sent
with; the master patient index links source patient records to persons. So a merge or an unmerge
moves links, never clinical rows, and no clinical data can cross between patients by accident.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from sharedcare.clock import utcnow

JsonType = JSON().with_variant(JSONB(), "postgresql")
CHAIN_KEYED = "audit:chain:keyed"  # the action of the entry after which the audit chain is keyed (migration 0024)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite forgets the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Person(Base):
    """One person's combined record; its id is the id served at /fhir/Patient/{id}."""

    __tablename__ = "persons"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PatientRecord(Base):
    """A patient as one source organisation knows them, and the person the MPI linked it to."""

    __tablename__ = "patient_records"
    __table_args__ = (
        UniqueConstraint("source_org", "source_id", name="uq_patient_records_source"),
        Index("ix_patient_records_nhs_number", "nhs_number"),
        Index("ix_patient_records_person", "person_id"),
        Index("ix_patient_records_family_key_dob", "family_key", "birth_date"),  # the patient search
        Index("ix_patient_records_birth_date", "birth_date"),
        Index("ix_patient_records_postcode", "postcode"),
        Index("ix_patient_records_name_key", "name_key"),
        Index("ix_patient_records_last_nhs_number", "last_nhs_number"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_org: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str] = mapped_column(String(64))
    person_id: Mapped[str] = mapped_column(ForeignKey("persons.id"))
    nhs_number: Mapped[str | None] = mapped_column(String(10))
    # The NHS number the record carried last, kept while its source sends none (removed, or one failing the
    # check): the patient's choices held against it go on applying to the record's person (consent.py)
    last_nhs_number: Mapped[str | None] = mapped_column(String(10))
    family: Mapped[str | None] = mapped_column(String(100))
    # The surname as a patient search compares it (`compare.search_key`: "O'Brien", "O’Brien" and "OBrien"
    # alike; "Öztürk" and "Ozturk"), made where `family` is written (`mpi._demographic_columns`)
    family_key: Mapped[str | None] = mapped_column(String(200))
    given: Mapped[str | None] = mapped_column(String(100))
    # The given name as the patient search compares it from its start (`compare.search_key`: "Çağla", "ÇAĞLA"
    # and "cagla" alike; "Mary-Jane" and "Mary Jane"), made where `given` is written; not indexed: the search
    # reaches a record by `family_key` and the birth date, and this only narrows those few rows
    given_key: Mapped[str | None] = mapped_column(String(200))
    birth_date: Mapped[date | None] = mapped_column(Date)
    gender: Mapped[str | None] = mapped_column(String(16))
    postcode: Mapped[str | None] = mapped_column(String(10))
    link_method: Mapped[str] = mapped_column(String(20))
    match_probability: Mapped[float] = mapped_column(Float)
    link_status: Mapped[str] = mapped_column(String(12))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What else matching uses: middle and usual given names, previous surnames, every postcode known
    # (the address history), phone numbers, email; name_key ("family given", normalised) for blocking.
    other_names: Mapped[dict[str, Any] | None] = mapped_column(JsonType)  # {"given": [...], "family": [...]}
    postcodes: Mapped[list[str] | None] = mapped_column(JsonType)
    phones: Mapped[list[str] | None] = mapped_column(JsonType)
    email: Mapped[str | None] = mapped_column(String(200))
    name_key: Mapped[str | None] = mapped_column(String(201))
    # Why the record is linked where it is: the waterfall of its strongest match (model, levels,
    # weights), and a plain note when it is held for review or an identifier could not be used.
    match_weight: Mapped[float | None] = mapped_column(Float)
    match_evidence: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    link_note: Mapped[str | None] = mapped_column(Text)


class Resource(Base):
    """The current version of one FHIR resource from one source, with its provenance."""

    __tablename__ = "resources"
    __table_args__ = (
        UniqueConstraint("source_org", "resource_type", "source_id", name="uq_resources_source"),
        Index("ix_resources_patient_record", "patient_record_id"),
        Index("ix_resources_type", "resource_type"),
        Index("ix_resources_source_received", "source_org", "source_system", "received_at"),  # feed freshness
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(40))
    source_org: Mapped[str] = mapped_column(String(16))
    source_system: Mapped[str] = mapped_column(String(40))
    source_id: Mapped[str] = mapped_column(String(64))
    patient_record_id: Mapped[int | None] = mapped_column(ForeignKey("patient_records.id"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    content: Mapped[dict[str, Any]] = mapped_column(JsonType)
    content_hash: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[str] = mapped_column(String(100))
    # The data category found at ingest, valid only while `category_key` is the framework's current
    # classification key (governance/classify.py); otherwise a read classifies the content afresh.
    category: Mapped[str | None] = mapped_column(String(30))
    category_key: Mapped[str | None] = mapped_column(String(24))


# "This row is a Patient", for a query that also names the person or record: tested as an expression so that
# SQLite (which keeps no statistics) finds the person's few rows by their record, rather than every Patient in
# the store by ix_resources_type (4 ms at 1,000 people, growing with the store).
IS_PATIENT = (Resource.resource_type + "") == "Patient"


class ResourceVersion(Base):
    """A version of a resource that a later one replaced (the current one is in `resources`): a correction
    or an `entered-in-error` withdrawal replaces what is shown, never what happened (vread, _history).
    Only superseded versions are copied, so ingesting new data costs no second write.

    `patient_record_id` is the source patient record the version was sent with: a source may later send
    the same resource for another patient, and each version stays that patient's (governed as theirs)."""

    __tablename__ = "resource_versions"
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    patient_record_id: Mapped[int | None] = mapped_column(ForeignKey("patient_records.id"))
    content: Mapped[dict[str, Any]] = mapped_column(JsonType)
    source_system: Mapped[str] = mapped_column(String(40))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    message_id: Mapped[str] = mapped_column(String(100))


class Quarantine(Base):
    """Input that could not be accepted, kept byte for byte with the reason and where it failed. `status`:
    held (waiting), replayed, superseded (its source has since sent it again, corrected, and that copy
    was stored: `superseded_by` names it; `message_key` is how the two are known to be one message), or erased
    (held past the retention period and its body erased with --include-unresolved). After the retention period
    the body is erased (`erased_at`; `payload` empty, `payload_sha256` the hash of what it was: ingest/retention.py)
    and the rest stays."""

    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_place", "filename", "location"),
                      Index("ix_quarantine_message_key", "source_org", "format", "message_key"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    source_org: Mapped[str | None] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(10))
    filename: Mapped[str] = mapped_column(Text)
    location: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(10), default="held")
    message_key: Mapped[str | None] = mapped_column(Text)
    superseded_by: Mapped[str | None] = mapped_column(Text)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    payload_sha256: Mapped[str | None] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the last sequence number and hash, locked while appending so the chain stays linear."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    # the newest CHAIN_KEYED entry's seq, set by the chain's step (migration 0031): an append reads it with the lock
    newest_mark: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AuditEntry(Base):
    """An append-only, hash-chained audit event (a FHIR AuditEvent in `event`)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_patient", "patient_id"),
        Index("ix_audit_events_user", "username"),
        Index("ix_audit_events_user_time", "username", "recorded_at"),  # the hour a search's review counts
        Index("ix_audit_events_organisation", "organisation"),
        # where the chain's key starts (governance/audit.py `chain_key`), found without reading the log
        Index("ix_audit_events_chain_keyed", "seq", sqlite_where=text(f"action = '{CHAIN_KEYED}'"),
              postgresql_where=text(f"action = '{CHAIN_KEYED}'")),
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(60))
    outcome: Mapped[str] = mapped_column(String(10))
    username: Mapped[str | None] = mapped_column(String(100))
    organisation: Mapped[str | None] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(36))
    event: Mapped[dict[str, Any]] = mapped_column(JsonType)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditTreeMark(Base):
    """One row: how far the server's checkpoint tree has checked the audit log (governance/checkpoints.py
    `TreeMark`): every entry up to `seq` was checked to be the service's, the last with chain hash `hash`,
    and the RFC 6962 tree head over them is `root`. `mac` is an HMAC of the three under a key derived from the
    audit chain's key, which the database does not hold: a row written without it is not trusted."""

    __tablename__ = "audit_tree_mark"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    root: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class AccessBasis(Base):
    """A point-of-care basis: one user may see one person's record, for a bounded time."""

    __tablename__ = "access_bases"
    __table_args__ = (Index("ix_access_bases_user_person", "username", "person_id"),
                      # a person's active bases, which a link event ends (`links.end_bases`)
                      Index("ix_access_bases_person_expires", "person_id", "expires_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100))
    person_id: Mapped[str] = mapped_column(String(36))
    basis: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReviewItem(Base):
    """Something the IG officer must look at: an access (break glass, implied consent, unusual pattern) or
    a source record (a practice's self-made record, a competing GP registration).

    An item about a source record names it (`patient_record_id`) and follows it through merges, unmerges
    and separations: its person is the record's person now. `person_id` is the person when it was queued
    (an access's person; for a record's item, only what the record belonged to then)."""

    __tablename__ = "review_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(30))
    username: Mapped[str] = mapped_column(String(100))
    person_id: Mapped[str] = mapped_column(String(36))
    patient_record_id: Mapped[int | None] = mapped_column(ForeignKey("patient_records.id"), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    audit_seq: Mapped[int | None] = mapped_column(Integer)  # the access or write it is about; none for a feed's
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(20), default="open")
    outcome: Mapped[str | None] = mapped_column(Text)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # overdue and escalated (TRUST BG2)


class AgreementChange(Base):
    """A change of an organisation's agreement status; the latest one overrides the framework file. Rows by
    `agreements.FRAMEWORK_FILE` are the file's own statuses as read at a start: they end what a stop ends and
    decide as recorded, unless dated 1970 (a first read's status whose start is not known)."""

    __tablename__ = "agreement_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_code: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(12))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_by: Mapped[str] = mapped_column(String(100))


class Preference(Base):
    """A patient's choices about sharing, held against the NHS number (as the national opt-out is)."""

    __tablename__ = "preferences"
    nhs_number: Mapped[str] = mapped_column(String(10), primary_key=True)
    object_all: Mapped[bool] = mapped_column(Boolean, default=False)
    object_orgs: Mapped[list[str]] = mapped_column(JsonType, default=list)
    opt_out_secondary: Mapped[bool] = mapped_column(Boolean, default=False)
    # the Consent's other provisions (governance/consent.py `Provision.to_json`), and its version
    provisions: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list, server_default="[]")
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The persons whose records carried the number when the choices last changed (those the decision point
    # applied them to then; none before migration 0029): an export holding one of them is withdrawn by the
    # change even once a source has corrected the number away from their record (`export.jobs._Changes`)
    persons: Mapped[list[str] | None] = mapped_column(JsonType)


class Feedback(Base):
    """A member of staff's answer to "Did this information help this person's care?".

    Who gave it is kept as role and organisation only, and nothing about the patient: it measures the
    record's usefulness (the board pack's staff feedback), not anyone's care."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    role: Mapped[str] = mapped_column(String(40))
    organisation: Mapped[str] = mapped_column(String(16))
    helped: Mapped[bool] = mapped_column(Boolean)
    comment: Mapped[str | None] = mapped_column(Text)


class SignInCode(Base):
    """A one-time code sent to a citizen signing in to the patient portal, kept only as a salted hash."""

    __tablename__ = "sign_in_codes"
    # codes issued to a person in the last hour, counted under the audit chain's lock (one_time_codes.py)
    __table_args__ = (Index("ix_sign_in_codes_person", "person_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the challenge the browser holds
    person_id: Mapped[str] = mapped_column(String(36))
    code_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class KeptSearch(Base):
    """A clinician's patient search kept on the server for its results page (`GET /search/results/{id}`), so
    that the criteria (an NHS number, a name and date of birth) stay out of URLs and logs and Back shows the
    results again: bound to the user and the session (the token's `jti`) that made it, short-lived, deleted
    at sign-out. The page runs the search afresh each time, through the governance gateway."""

    __tablename__ = "kept_searches"
    __table_args__ = (Index("ix_kept_searches_session", "session_id"),
                      Index("ix_kept_searches_expires", "expires_at"))
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # random: the results page's address
    username: Mapped[str] = mapped_column(String(100))
    session_id: Mapped[str] = mapped_column(String(100))
    criteria: Mapped[dict[str, Any]] = mapped_column(JsonType)  # the form as typed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LinkEvent(Base):
    """One change of the person some source records belong to, with every move, so that a merge can be
    undone exactly: which records went where, by whom, and why."""

    __tablename__ = "link_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(20))  # merge | unmerge | separate | relink
    by: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")
    undone_by: Mapped[int | None] = mapped_column(Integer)
    # the MPI review item (match_reviews.id) whose reviewer's decision this merge or separate carried out
    # (`links.decide`); none for anyone else's. Kept since migration 0032, which read the older ones' from
    # their reason; never read from the reason, which an operator may word as a reviewer does
    match_review_id: Mapped[int | None] = mapped_column(Integer)
    moves: Mapped[list[LinkMove]] = relationship(order_by="LinkMove.id", lazy="selectin")


class LinkMove(Base):
    """One source record moving from one person to another in a LinkEvent. Kept by record, so that whose
    record a past audit entry was about can be told after merges and relinks (a citizen's access log)."""

    __tablename__ = "link_moves"
    __table_args__ = (
        Index("ix_link_moves_record", "patient_record_id"),
        Index("ix_link_moves_from_person", "from_person"),  # has a record ever left this person (access_log)
        Index("ix_link_moves_to_person", "to_person"),  # with from_person: whose records an access was to
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    link_event_id: Mapped[int] = mapped_column(ForeignKey("link_events.id"))
    patient_record_id: Mapped[int] = mapped_column(ForeignKey("patient_records.id"))
    from_person: Mapped[str] = mapped_column(String(36))
    to_person: Mapped[str] = mapped_column(String(36))
    # the record's link status and method before the move, for an unmerge to restore (none before 0028)
    from_status: Mapped[str | None] = mapped_column(String(12))
    from_method: Mapped[str | None] = mapped_column(String(20))


class MatchModel(Base):
    """A trained matching model (Splink JSON), kept with the index it was trained on; the newest is the
    one real-time matching on ingest scores with."""

    __tablename__ = "mpi_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(40))
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime)
    trained_on: Mapped[int] = mapped_column(Integer)
    model: Mapped[dict[str, Any]] = mapped_column(JsonType)


class MatchReview(Base):
    """A pair of source records the model was unsure about, with its evidence, for a person to decide."""

    __tablename__ = "match_reviews"
    __table_args__ = (UniqueConstraint("record_a", "record_b", name="uq_match_reviews_pair"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    record_a: Mapped[int] = mapped_column(ForeignKey("patient_records.id"))
    record_b: Mapped[int] = mapped_column(ForeignKey("patient_records.id"))
    probability: Mapped[float] = mapped_column(Float)
    evidence: Mapped[dict[str, Any]] = mapped_column(JsonType)  # per comparison: level and match weight
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # open | a reviewer's linked, separate or deferred | a relink's relink-same, relink-apart (identity/links.py)
    status: Mapped[str] = mapped_column(String(12), default="open")
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OAuthClient(Base):
    """An app or partner system registered to use the FHIR API through SMART on FHIR (`sharedcare clients add`).

    `kind` is "public" (a user-facing app: authorisation code with PKCE, no secret) or "backend" (a system:
    client credentials with a JWT signed by a key in `jwks`, acting for `organisation` with `role`)."""

    __tablename__ = "oauth_clients"
    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))  # public | backend
    scope: Mapped[str] = mapped_column(Text)  # the scopes it may be granted, space-separated
    redirect_uris: Mapped[list[str]] = mapped_column(JsonType, default=list)
    launch_uri: Mapped[str | None] = mapped_column(String(500))
    organisation: Mapped[str | None] = mapped_column(String(20))
    role: Mapped[str | None] = mapped_column(String(50))
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OAuthCode(Base):
    """An authorisation code, single use and short-lived, with the PKCE challenge it must be redeemed with."""

    __tablename__ = "oauth_codes"
    code: Mapped[str] = mapped_column(String(120), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100))
    username: Mapped[str] = mapped_column(String(100))
    redirect_uri: Mapped[str] = mapped_column(String(500))
    scope: Mapped[str] = mapped_column(Text)
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(10))
    patient: Mapped[str | None] = mapped_column(String(36))  # the launch patient, for patient-level scopes
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RevokedToken(Base):
    """The id (jti) of an access token revoked before its expiry (RFC 7009, portal sign-out); every request
    checks it. Rows may be deleted once `expires_at` has passed: the token is refused as expired anyway."""

    __tablename__ = "revoked_tokens"
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SeenAssertion(Base):
    """A backend client's signed assertion (jti) already used at the token endpoint: one use each (RFC 7523)."""

    __tablename__ = "seen_assertions"
    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    jti: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ExportJob(Base):
    """A Bulk Data export for secondary use: who asked, for what, how far it has got, and its files.

    Only the user who started it, in its role and organisation, may poll it or download its files; the
    files live under the data folder (`out_dir`) until the job is cancelled or expires."""

    __tablename__ = "export_jobs"
    __table_args__ = (Index("ix_export_jobs_user", "username"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(100))
    # the role and organisation the kick-off was decided under: the run goes under them or not at all
    role: Mapped[str | None] = mapped_column(String(50))
    organisation: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(10))  # system | patient | group
    group_id: Mapped[str | None] = mapped_column(String(16))
    types: Mapped[list[str] | None] = mapped_column(JsonType)  # None: every type
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    request_url: Mapped[str] = mapped_column(Text)
    # accepted | running | completed | failed | cancelled | expired | withdrawn
    status: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    people_total: Mapped[int] = mapped_column(Integer, default=0)
    people_done: Mapped[int] = mapped_column(Integer, default=0)
    output: Mapped[list[dict[str, Any]]] = mapped_column(JsonType, default=list)  # [{"type", "file", "count"}]
    summary: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)  # people included/excluded, withheld
    error: Mapped[str | None] = mapped_column(Text)
    out_dir: Mapped[str] = mapped_column(Text)
    # the operator account and token id of a `sharedcare token` it was started with: its run's entries say so
    minted_by: Mapped[str | None] = mapped_column(String(100))
    token_id: Mapped[str | None] = mapped_column(String(100))
    # the organisations whose data its files hold, recorded as its run finished, its persons beside it
    # (`ExportJobPerson`): what later changes withdraw it (`export.jobs._Changes`). None: not recorded (a job
    # finished before 0027, or a command-line export past retention): any change withdraws it
    source_orgs: Mapped[list[str] | None] = mapped_column(JsonType)


class ExportJobPerson(Base):
    """A person an export's files hold, by internal id (never in its files or the audit): a choice of theirs
    made after its kick-off withdraws it (`export.jobs._Changes`), one of anyone else's does not.

    A row a person rather than a file in the job's folder: a command-line export's folder is its operator's,
    and the ids must not leave the store; the rows are committed before the transaction that publishes the
    job reads them, and an index lookup finds the jobs holding the persons a change maps to (1,000 persons
    against 1,000,000 rows: 16-40 ms). 1,000,000 persons take 180 MB on SQLite (no rowid: the key is the
    table) and 270 MB on PostgreSQL, both indexes included, and 6 s and 17 s to insert, beside files of
    some 16,000,000 resources (benchmarks, 2026-12-07); the rows go once the job holds no files
    (`ExportJobs.expire`). No foreign key: a check per row would slow the million inserts, and the rows are
    only ever read through their job."""

    __tablename__ = "export_job_persons"
    __table_args__ = (Index("ix_export_job_persons_person", "person_id"), {"sqlite_with_rowid": False})
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    person_id: Mapped[str] = mapped_column(String(36), primary_key=True)
