"""The registry of apps and partner systems that may use the FHIR API (`sharedcare clients add/list/remove`).

A table rather than a config file: the CLI adds a client without anyone editing YAML, and the token
endpoint and every API request read it, so a removed client and every token it holds stop working at
once. `RegisteredClient` is the Authlib client model (ClientMixin) over a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance import scopes
from sharedcare.governance.audit import CITIZEN_PREFIX as CITIZEN_PREFIX  # (re-exported)
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for, citizen_actor
from sharedcare.governance.policy import Actor
from sharedcare.store.models import OAuthClient

PUBLIC, BACKEND = "public", "backend"
CLIENT_PREFIX = "client:"  # ... a registered backend client
PUBLIC_SCOPE = "launch patient/*.read user/*.read"
BACKEND_SCOPE = "system/*.read"
ASSERTION_ALGORITHMS = ("RS384", "ES384")  # SMART Backend Services: RS384 or ES384


@dataclass(frozen=True)
class RegisteredClient(ClientMixin):
    """A registered client as Authlib's grants ask about it."""

    client_id: str
    name: str
    kind: str
    scope: str
    redirect_uris: tuple[str, ...]
    launch_uri: str | None
    organisation: str | None
    role: str | None
    jwks: dict[str, Any] | None

    @classmethod
    def of(cls, row: OAuthClient) -> RegisteredClient:
        return cls(row.client_id, row.name, row.kind, row.scope, tuple(row.redirect_uris or ()), row.launch_uri,
                   row.organisation, row.role, row.jwks)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        """The requested scopes this client is registered for; others are dropped (RFC 6749 3.3), and so are
        a user-facing app's write scopes, whatever it was registered for (`add_client`)."""
        registered = self.scope.split()
        return " ".join(w for w in (scope or "").split() if any(scopes.covers(g, w) for g in registered)
                        and not (self.kind == PUBLIC and scopes.write_scopes(w)))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact match: no prefix or pattern (RFC 9700 4.1.3)

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # no client has a shared secret: public apps use PKCE, backends sign assertions

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == ("none" if self.kind == PUBLIC else "private_key_jwt")

    def check_response_type(self, response_type: str) -> bool:
        return self.kind == PUBLIC and response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == ("authorization_code" if self.kind == PUBLIC else "client_credentials")

    def key_set(self) -> KeySet:
        return KeySet.import_key_set(self.jwks or {"keys": []})  # type: ignore[arg-type]


def find_client(session: Session, client_id: str) -> RegisteredClient | None:
    row = session.get(OAuthClient, client_id)
    return RegisteredClient.of(row) if row else None


def current_actor(session: Session, fw: Framework, username: str) -> Actor | None:
    """Who `username` (a token's subject, or the user an export job records) is now: a backend client
    acts as its registered role and organisation, looked up each time so that removing or re-registering
    it takes effect at once (None when it is no longer registered); a citizen is themselves; anyone else
    is the framework's user of that name (an unknown one has no role, and is denied)."""
    if username.startswith(CLIENT_PREFIX):
        client = find_client(session, username.removeprefix(CLIENT_PREFIX))
        if client is None or client.role is None:
            return None
        return Actor(username=username, role=fw.roles.get(client.role), organisation=client.organisation or "")
    if username.startswith(CITIZEN_PREFIX):
        return citizen_actor(fw, username.removeprefix(CITIZEN_PREFIX))
    return actor_for(fw, username)


def list_clients(session: Session) -> list[RegisteredClient]:
    return [RegisteredClient.of(r) for r in session.scalars(select(OAuthClient).order_by(OAuthClient.client_id))]


def remove_client(session: Session, client_id: str, by: str) -> RegisteredClient:
    """Cut an app or partner system off: no new tokens, and each token it holds is refused on its next
    request (`tokens.refusal`, `current_actor`). Audited, naming what it was registered as."""
    row = session.get(OAuthClient, client_id)
    if row is None:
        raise SharedcareError(f"no client '{client_id}' is registered", where="clients remove")
    removed = RegisteredClient.of(row)
    session.delete(row)
    record_audit(session, AuditRecord(AuditAction.CLIENT_REMOVE, "permit", by, purpose="governance", detail={
        "client_id": removed.client_id, "kind": removed.kind, "organisation": removed.organisation or "",
        "role": removed.role or ""}))
    return removed


def add_client(session: Session, fw: Framework, client_id: str, name: str, kind: str, *, by: str,
               redirect_uris: list[str] | None = None, launch_uri: str | None = None,
               organisation: str | None = None, role: str | None = None, jwks: dict[str, Any] | None = None,
               scope: str | None = None) -> RegisteredClient:
    """Register a client, checking what each kind needs; every problem names the option at fault. Audited,
    naming what it may do: registering a client grants it access, as removing one takes it away."""
    where = "clients add"
    if session.get(OAuthClient, client_id) is not None:
        raise SharedcareError(f"a client '{client_id}' is already registered", where=where)
    scope = scope or (PUBLIC_SCOPE if kind == PUBLIC else BACKEND_SCOPE)
    unknown = [w for w in scope.split() if not scopes.is_known(w)]
    if unknown:
        raise SharedcareError(f"--scope: not SMART scopes this server knows: {', '.join(unknown)}", where=where)
    if kind == PUBLIC:
        if not redirect_uris:
            raise SharedcareError("--redirect-uri: a public app needs at least one redirect URI", where=where)
        for option, uri in [("--redirect-uri", u) for u in redirect_uris] + [("--launch-uri", launch_uri or "")]:
            if uri and not _plain_url(uri):
                raise SharedcareError(f"{option}: '{uri}' is not an absolute https URL (http only on loopback)",
                                      where=where)
        if any(s.level == "system" for s in scopes.read_scopes(scope)):
            raise SharedcareError("--scope: system/ scopes are for backend clients", where=where)
        if scopes.write_scopes(scope):
            raise SharedcareError("--scope: a user-facing app is not given write scopes (an app one user approves "
                                  "would be a feed no agreement names): register the organisation's system as a "
                                  "backend client to write", where=where)
    elif kind == BACKEND:
        _check_backend(fw, organisation, role, jwks, scope, where)
    else:
        raise SharedcareError(f"--kind must be {PUBLIC} or {BACKEND}, not '{kind}'", where=where)
    row = OAuthClient(client_id=client_id, name=name, kind=kind, scope=scope, redirect_uris=redirect_uris or [],
                      launch_uri=launch_uri, organisation=organisation, role=role, jwks=jwks, created_at=utcnow())
    session.add(row)
    session.flush()
    record_audit(session, AuditRecord(AuditAction.CLIENT_ADD, "permit", by, purpose="governance", detail={
        "client_id": client_id, "kind": kind, "scope": scope, "organisation": organisation or "",
        "role": role or ""}))
    return RegisteredClient.of(row)


def _plain_url(uri: str) -> bool:
    """An absolute URL an app may be sent to: https (http on loopback, for development), no user info,
    nothing that could break out of the portal's Content-Security-Policy, no fragment (RFC 6749 3.1.2)."""
    part = urlsplit(uri)
    loopback = part.hostname in ("localhost", "127.0.0.1", "::1")
    return (part.scheme == "https" or (part.scheme == "http" and loopback)) and bool(part.hostname) \
        and "@" not in part.netloc and not part.fragment and not any(c in uri for c in " ;,'\"\t\n\r")


def _check_backend(fw: Framework, organisation: str | None, role: str | None, jwks: dict[str, Any] | None,
                   scope: str, where: str) -> None:
    if not organisation or fw.organisation(organisation) is None:
        raise SharedcareError(f"--organisation: '{organisation or ''}' is not an organisation in the framework",
                              where=where)
    framework_role = fw.roles.get(role or "")
    if framework_role is None or framework_role.citizen:
        raise SharedcareError(f"--role: '{role or ''}' is not a staff role in the framework "
                              f"({', '.join(r for r, v in fw.roles.items() if not v.citizen)})", where=where)
    if any(s.level != "system" for s in scopes.read_scopes(scope)):
        raise SharedcareError("--scope: a backend client is given system/ scopes only", where=where)
    if scopes.write_scopes(scope) and not framework_role.writes:
        raise SharedcareError(f"--scope: the role {role} may not write to the record (the framework gives "
                              f"clinical:record:write to {', '.join(r for r, v in fw.roles.items() if v.writes)}): "
                              "register read scopes only", where=where)
    try:
        keys = KeySet.import_key_set(jwks or {})  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise SharedcareError(f"--jwks: not a JSON Web Key Set ({exc})", where=where) from exc
    if not keys.keys or any(k.is_private for k in keys.keys):
        raise SharedcareError("--jwks: give the client's public keys (a JWKS with at least one key and no "
                              "private parts)", where=where)
