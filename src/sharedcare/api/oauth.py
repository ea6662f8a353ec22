"""The SMART on FHIR authorisation server, built on Authlib's OAuth 2 grants.

- Authorisation code with PKCE (S256 only) for user-facing apps: a configured user signs in through the
  portal's sign-in and approves; an EHR launch (`launch`, minted by POST /oauth/launch from the clinician
  portal) puts the patient in the token response and the token.
- Client credentials with a signed JWT assertion (private_key_jwt, RS384/ES384, one use per `jti`) for
  backend systems, each acting for an organisation in the framework, only while its agreement is in force.
- Revocation (RFC 7009): the token's `jti` goes into `revoked_tokens`, which every request checks.

Access tokens are the API's own signed JWTs (`api/auth.py`): the same checks apply to every caller, and
the sharing framework still decides every read. Authlib has no FastAPI server integration, so the small
adapter (request in, response out) is here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

import jwt as pyjwt
from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    TokenMixin,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from starlette.concurrency import run_in_threadpool

from sharedcare.api.auth import (
    ALGORITHM,
    CLIENT_PREFIX,
    ISSUER,
    AuthError,
    mint_token,
    read_token,
    sign_token,
)
from sharedcare.api.deps import (
    SESSION_COOKIE,
    FrameworkDep,
    FromAnotherSite,
    OAuthDep,
    RecordsDep,
    SettingsDep,
    from_own_pages,
    people_only,
    public_base,
)
from sharedcare.clock import utcnow
from sharedcare.config import Settings
from sharedcare.governance import scopes
from sharedcare.governance.clients import ASSERTION_ALGORITHMS, PUBLIC, RegisteredClient
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.tokens import Code, OAuthStore
from sharedcare.portal import csrf, pages

router = APIRouter()

AUTHORIZE_PATH, TOKEN_PATH, REVOKE_PATH = "/oauth/authorize", "/oauth/token", "/oauth/revoke"
CODE_MINUTES = 5  # an authorisation code is redeemed within seconds; RFC 6749 allows at most 10
LAUNCH_MINUTES = 5
BACKEND_TOKEN_MINUTES = 5  # SMART Backend Services: short-lived, the client asks again with a new assertion
MAX_ASSERTION_SECONDS = 300  # SMART: an assertion's exp is at most five minutes ahead


@dataclass(frozen=True)
class Grantee:
    """The signed-in user who approved an app, with the EHR launch's patient if any."""

    username: str
    patient: str | None = None

    def get_user_id(self) -> str:
        return self.username


@dataclass(frozen=True)
class StoredCode(AuthorizationCodeMixin):
    code: Code

    def get_redirect_uri(self) -> str:
        return self.code.redirect_uri

    def get_scope(self) -> str:
        return self.code.scope


@dataclass(frozen=True)
class PresentedToken(TokenMixin):
    """A token presented for revocation: its verified claims."""

    claims: dict[str, Any]

    def check_client(self, client: RegisteredClient) -> bool:
        return self.claims.get("client_id") == client.client_id


class FormRequest(OAuth2Request):
    """Authlib's request over a FastAPI request whose form (if any) has already been read."""

    def __init__(self, request: Request, form: dict[str, str] | None = None) -> None:
        super().__init__(request.method, str(request.url), headers=dict(request.headers))
        self._args = dict(request.query_params)
        self._form = form or {}
        self.payload = BasicOAuth2Payload({**self._args, **self._form})

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class PkceS256(CodeChallenge):
    """PKCE on every authorisation request, S256 only (SMART App Launch 2)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code: StoredCode) -> str:
        return authorization_code.code.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: StoredCode) -> str:
        return authorization_code.code.code_challenge_method


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        user: Grantee = request.user
        data = request.payload.data
        self.server.store.save_code(Code(
            code=code, client_id=request.client.client_id, username=user.username,
            redirect_uri=request.payload.redirect_uri or "", scope=request.scope or "",
            code_challenge=data["code_challenge"], code_challenge_method=data["code_challenge_method"],
            patient=user.patient), CODE_MINUTES)

    def query_authorization_code(self, code: str, client: RegisteredClient) -> StoredCode | None:
        found = self.server.store.code(code, client.client_id)
        return StoredCode(found) if found else None

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        """Spend the code before its token leaves: of two redemptions at once only the first gets one
        (RFC 6749 4.1.2), the other is refused as a code already used."""
        if not self.server.store.use_code(authorization_code.code.code):
            raise InvalidGrantError("this authorisation code was already used")

    def authenticate_user(self, authorization_code: StoredCode) -> Grantee:
        """The user who approved the app, while their organisation's agreement is in force: a code approved
        just before it was suspended is not redeemed after."""
        why = self.server.store.staff_not_sharing(authorization_code.code.username)
        if why is not None:
            raise OrganisationNotSharing(f"{why}; no token is issued")
        return Grantee(authorization_code.code.username, authorization_code.code.patient)


class OrganisationNotSharing(OAuth2Error):
    error = "unauthorized_client"
    status_code = 403


class BackendGrant(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def validate_requested_scope(self) -> None:
        """Only the client's registered system/ scopes, and only while its organisation shares data."""
        client: RegisteredClient = self.request.client
        wanted = (self.request.payload.scope or "").split()
        if not wanted or client.get_allowed_scope(" ".join(wanted)).split() != wanted:
            raise InvalidScopeError(f"ask for scopes this client is registered for: {client.scope}")
        in_force, status = self.server.store.sharing(client.organisation)
        if not in_force:
            raise OrganisationNotSharing(f"{client.organisation} has no information-sharing agreement in force "
                                         f"({status}); no token is issued")


class PrivateKeyJwt(JWTBearerClientAssertion):
    """SMART Backend Services client authentication: a JWT signed with the client's registered key."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: SmartServer) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.server = server

    def get_audiences(self) -> list[str]:
        return [self.server.base_url + TOKEN_PATH]

    def resolve_client_public_key(self, client: RegisteredClient) -> Any:
        return client.key_set()

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jose_jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGORITHMS))
        except JoseError as exc:
            raise InvalidClientError(description=f"the client assertion is not signed by a registered key "
                                                 f"with {' or '.join(ASSERTION_ALGORITHMS)}") from exc
        self.verify_claims(token.claims)
        if int(token.claims["exp"]) > time.time() + MAX_ASSERTION_SECONDS + self.leeway:
            raise InvalidClientError(description="the client assertion must expire within five minutes")
        claims: dict[str, Any] = token.claims
        return claims

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        return self.server.store.first_use_of_assertion(str(claims["sub"]), str(jti), int(claims["exp"]))


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["none", "private_key_jwt"]
    SUPPORTED_TOKEN_TYPES = ("access_token",)

    def query_token(self, token_string: str, token_type_hint: str | None) -> PresentedToken | None:
        try:
            return PresentedToken(read_token(self.server.settings, token_string))
        except AuthError:
            return None  # expired or not ours: nothing to revoke, and RFC 7009 answers 200 all the same

    def revoke_token(self, token: PresentedToken, request: OAuth2Request) -> None:
        self.server.store.revoke(token.claims)


class SmartServer(AuthorizationServer):
    """One request's authorisation server, bound to its store (one database session)."""

    def __init__(self, store: OAuthStore, settings: Settings, fw: Framework, base_url: str) -> None:
        super().__init__()
        self.store, self.settings, self.fw, self.base_url = store, settings, fw, base_url
        self.register_client_auth_method(PrivateKeyJwt.CLIENT_AUTH_METHOD, PrivateKeyJwt(self))
        self.register_grant(CodeGrant, [PkceS256(required=True)])
        self.register_grant(BackendGrant)
        self.register_endpoint(Revocation(self))
        self.register_token_generator("default", self._token)

    def query_client(self, client_id: str) -> RegisteredClient | None:
        return self.store.client(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Nothing to keep: the token is a signed JWT, and revocation records its jti."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No listeners."""

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request  # the routes build it: the form must be read asynchronously first

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("no endpoint here takes JSON")

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        if isinstance(body, dict):
            return JSONResponse(body, status_code=status, headers=dict(headers))
        return Response(body or None, status_code=status, headers=dict(headers))

    def validate_requested_scope(self, scope: str | None) -> None:
        unknown = [w for w in (scope or "").split() if not scopes.is_known(w)]
        if unknown:
            raise InvalidScopeError(f"unknown scope(s): {', '.join(unknown)}")

    def _token(self, grant_type: str, client: RegisteredClient, user: Grantee | None = None,
               scope: str | None = None, expires_in: int | None = None,
               include_refresh_token: bool = True) -> dict[str, Any]:
        scope = scope or ""
        if user is None:  # a backend system, acting as its organisation and role
            minutes = BACKEND_TOKEN_MINUTES
            access = sign_token(self.settings, {"sub": f"{CLIENT_PREFIX}{client.client_id}", "role": client.role,
                                                "org": client.organisation, "scope": scope,
                                                "client_id": client.client_id}, minutes)
        else:
            minutes = self.settings.token_minutes
            extra = {"client_id": client.client_id} | ({"patient": user.patient} if user.patient else {})
            access = mint_token(self.settings, self.fw, user.username, scope, minutes, **extra)
        token = {"access_token": access, "token_type": "Bearer", "expires_in": minutes * 60, "scope": scope}
        if user is not None and user.patient:
            token["patient"] = user.patient
        return token


def _server(request: Request, store: OAuthStore) -> SmartServer:
    base = public_base(request)
    return SmartServer(store, request.app.state.settings, request.app.state.framework, base)


async def _form(request: Request) -> dict[str, str]:
    return {k: str(v) for k, v in (await request.form()).items()}


def _oauth_error(error: OAuth2Error) -> Response:
    status, body, headers = error()
    return JSONResponse(body, status_code=status, headers=dict(headers)) if body else \
        Response(status_code=status, headers=dict(headers))


# -- EHR launch ----------------------------------------------------------------------------------------

def mint_launch(settings: Settings, username: str, client_id: str, patient: str) -> str:
    """The opaque `launch` value: which user launched which app for which patient, for a few minutes."""
    now = utcnow()
    return pyjwt.encode({"iss": ISSUER, "aud": f"launch:{client_id}", "sub": username, "patient": patient,
                         "iat": now, "exp": now + timedelta(minutes=LAUNCH_MINUTES)}, settings.secret,
                        algorithm=ALGORITHM)


def read_launch(settings: Settings, launch: str, client_id: str, username: str) -> str:
    """The launch's patient, if this launch was made by this user for this app and has not expired."""
    try:
        claims = pyjwt.decode(launch, settings.secret, algorithms=[ALGORITHM], issuer=ISSUER,
                              audience=f"launch:{client_id}", options={"require": ["exp", "sub", "patient"]})
    except pyjwt.PyJWTError as exc:
        raise InvalidRequestError("the launch is not valid for this app or has expired") from exc
    if claims["sub"] != username:
        raise InvalidRequestError("the launch was made by another user")
    return str(claims["patient"])


@router.get("/oauth/launch", dependencies=[Depends(people_only)])  # a portal page: no app launches apps
def launch_page(request: Request, records: RecordsDep, store: OAuthDep, fw: FrameworkDep,
                patient: str) -> Response:
    """The apps that can be launched for the record open on screen (registered with a launch URI)."""
    if records.needs_basis(patient):
        return RedirectResponse(f"/record/{patient}", status_code=303)
    apps = [c for c in store.clients() if c.kind == PUBLIC and c.launch_uri]
    response = pages.render(request, "oauth_launch.html", apps=apps, patient=patient,
                            account=pages.account(records.actor, fw))
    return _form_may_lead_to(response, [str(app.launch_uri) for app in apps])


def _form_may_lead_to(response: Response, uris: list[str]) -> Response:
    """Let this page's form redirect to the app (CSP `form-action` covers redirects after a submission);
    registration checked that each URI is a plain http(s) URL."""
    origins = sorted({f"{part.scheme}://{part.netloc}" for part in map(urlsplit, uris)})
    response.headers["Content-Security-Policy"] = pages.CONTENT_SECURITY_POLICY.replace(
        "form-action 'self'", " ".join(["form-action 'self'", *origins]))
    return response


@router.post("/oauth/launch", dependencies=[Depends(people_only), Depends(csrf.check)])
def launch(request: Request, records: RecordsDep, store: OAuthDep, settings: SettingsDep,
           client_id: Annotated[str, Form()], patient: Annotated[str, Form()]) -> Response:
    """Launch a registered app from the clinician portal for the record open on screen (EHR launch).

    Only for a record the user may open now (a basis recorded, the framework permitting): otherwise the
    same refusal as the record page, audited."""
    client = store.client(client_id)
    if client is None or client.kind != PUBLIC or not client.launch_uri:
        return pages.error_page(request, 400, f"no app '{client_id}' is registered for launch from the portal")
    if records.needs_basis(patient):
        return RedirectResponse(f"/record/{patient}", status_code=303)  # record a basis first
    value = mint_launch(settings, records.actor.username, client_id, patient)
    iss = public_base(request) + "/fhir"
    return RedirectResponse(add_params_to_uri(client.launch_uri, [("iss", iss), ("launch", value)]),
                            status_code=303)


# -- authorisation endpoint -----------------------------------------------------------------------

def _signed_in_user(request: Request, settings: Settings, fw: Framework, store: OAuthStore) -> str | None:
    """The configured user of the portal session, if any (citizens cannot approve apps here).

    Only a session the person began at the portal approves an app: an app's own access token sent as the
    cookie (`client_id`) would let the app grant itself wider scopes with no one asked, again and again,
    and a token an operator minted (`minted_by`) would approve one in the person's name without them."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        claims = read_token(settings, token)
    except AuthError:
        return None
    if "client_id" in claims or "minted_by" in claims:
        return None
    subject = str(claims["sub"])
    if subject not in fw.users or store.refusal(claims) or store.staff_not_sharing(subject):
        return None  # (one whose organisation no longer shares is refused at the sign-in it is sent to)
    return subject


def _check_launch(grant: Any, settings: Settings, username: str) -> str | None:
    """The launch patient; patient-level scopes need one (no standalone patient picker here). A problem
    goes back to the app's (already checked) redirect URI."""
    launch_value = grant.request.payload.data.get("launch")
    wanted = scopes.read_scopes(grant.request.scope or "")
    try:
        if not launch_value:
            if any(s.level == "patient" for s in wanted):
                raise InvalidRequestError("patient/ scopes need an EHR launch: start the app from the patient's "
                                          "record in the clinician portal")
            return None
        return read_launch(settings, launch_value, grant.request.client.client_id, username)
    except OAuth2Error as error:
        error.redirect_uri, error.state = grant.redirect_uri, grant.request.payload.state
        raise


def _consent_grant(request: Request, store: OAuthStore) -> tuple[SmartServer, Any]:
    """The app's request, checked: its client, redirect URI, PKCE, and the FHIR server it names (`aud`)."""
    server = _server(request, store)
    oauth_request = FormRequest(request)
    grant = server.get_consent_grant(oauth_request)
    fhir_base = public_base(request) + "/fhir"
    if (grant.request.payload.data.get("aud") or "").rstrip("/") != fhir_base:
        # SMART App Launch: a request naming another server (a counterfeit one that sent the app here, to
        # collect the token it would then be shown) is refused
        error = InvalidRequestError(f"aud must name this FHIR server, {fhir_base}")
        error.redirect_uri, error.state = grant.redirect_uri, grant.request.payload.state
        raise error
    return server, grant


def _refuse(request: Request, error: OAuth2Error) -> Response:
    """Redirect the error to the app when its redirect URI is known and valid, else say so on a page."""
    if error.redirect_uri:
        return _oauth_error(error)
    return pages.error_page(request, 400, f"This app's sign-in request cannot be accepted: "
                                          f"{error.description or error.error}", heading="App sign-in refused")


@router.get(AUTHORIZE_PATH)
def authorize(request: Request, settings: SettingsDep, fw: FrameworkDep, store: OAuthDep) -> Response:
    """Check the app's request, sign the user in if needed, and ask them to approve it."""
    username = _signed_in_user(request, settings, fw, store)
    try:
        grant = _consent_grant(request, store)[1]
        if username is None:
            return pages.staff_sign_in(request, target=f"{AUTHORIZE_PATH}?{request.url.query}")
        patient = _check_launch(grant, settings, username)
    except OAuth2Error as error:
        return _refuse(request, error)
    client: RegisteredClient = grant.request.client
    described = [_describe(w) for w in (grant.request.scope or "").split()]
    # what it asked for beyond that is dropped: a wish to write is named, so no one approves it unaware
    asked_to_write = bool(scopes.write_scopes(grant.request.payload.scope or ""))
    page = pages.render(request, "oauth_authorize.html", app=client.name, scopes=described,
                        asked_to_write=asked_to_write,
                        patient=patient, action=f"{AUTHORIZE_PATH}?{request.url.query}",
                        account=pages.account(actor_for(fw, username), fw))
    return _form_may_lead_to(page, [grant.redirect_uri])


@router.post(AUTHORIZE_PATH, dependencies=[Depends(csrf.check)])
def approve(request: Request, settings: SettingsDep, fw: FrameworkDep, store: OAuthDep,
            decision: Annotated[str, Form()] = "") -> Response:
    """The user's answer: a code for the app (approve) or access_denied, sent to its redirect URI. Only from
    the approval page itself: a sibling site's form approves nothing in her name (her session is kept)."""
    if not from_own_pages(request):
        raise FromAnotherSite("this approval came from another site's page: approve the app on the shared care "
                              "record's own page")
    username = _signed_in_user(request, settings, fw, store)
    if username is None:
        raise AuthError("sign in again to approve the app")
    try:
        server, grant = _consent_grant(request, store)
        patient = _check_launch(grant, settings, username)
    except OAuth2Error as error:
        return _refuse(request, error)
    user = Grantee(username, patient) if decision == "approve" else None
    response: Response = server.create_authorization_response(grant.request, grant_user=user, grant=grant)
    return response


def _describe(scope: str) -> str:
    found = scopes.parse(scope)
    if found is None:
        return "Know which patient's record you opened it from" if scope == "launch" else scope
    what = "every part of the record" if found.resource_type == "*" else f"{found.resource_type} records"
    whose = {"patient": "of this patient only", "user": "of the patients you may see",
             "system": "as a system"}[found.level]
    verb = "Read" if found.reads and found.searches else "Search" if found.searches else \
        "Read, by reference only (no searching)," if found.reads else ""
    verb = f"{verb} and write" if verb and found.writes else verb or "Write"
    return f"{verb} {what} {whose}, as the sharing framework allows you"


# -- token and revocation endpoints -------------------------------------------------------------------

@router.post(TOKEN_PATH)
async def token(request: Request, store: OAuthDep) -> Response:
    """Codes and assertions are redeemed here. A backend's request counts as its sign-in and is audited,
    granted or not (TRUST AU3; refused ones within the limits of refusals at the door); an app's user
    signed in at the portal, audited there. Expired rows are purged after a grant, at most once a minute:
    a refused request writes nothing else. The form is read in the event loop, the rest (signatures, the
    store, the audit) in a worker thread, where a wait for the store holds up no other request."""
    form = await _form(request)

    def redeem() -> Response:
        oauth_request: FormRequest | None = None
        try:
            oauth_request = FormRequest(request, form)  # refuses plain HTTP (InsecureTransportError)
            response: Response = _server(request, store).create_token_response(oauth_request)
        except OAuth2Error as error:
            response = _oauth_error(error)
        if form.get("grant_type") == "client_credentials":
            store.client_sign_in(oauth_request.client if oauth_request else None, response.status_code == 200,
                                 request.state.request_id, request.client.host if request.client else None)
        if response.status_code == 200:
            store.purge_expired_now_and_then()
        return response

    return await run_in_threadpool(redeem)


@router.post(REVOKE_PATH)
async def revoke_token(request: Request, store: OAuthDep) -> Response:
    """RFC 7009: the client that was issued a token may revoke it; any caller gets 200 for a token that is
    not (or no longer) valid. Worked in a worker thread, as the token endpoint is."""
    form = await _form(request)

    def revoke() -> Response:
        try:
            response: Response = _server(request, store).create_endpoint_response(
                Revocation.ENDPOINT_NAME, FormRequest(request, form))
        except OAuth2Error as error:
            return _oauth_error(error)
        return response

    return await run_in_threadpool(revoke)
