"""Request-scoped dependencies: the caller (actor) and a governed repository bound to them.

Routes declare `RecordsDep` and never see a database session (TRUST AC2); the session lives here and
is committed when the request succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request

from sharedcare.api.auth import AuthError, read_token
from sharedcare.config import Settings
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.governance.policy import Actor
from sharedcare.store.database import Database

SESSION_COOKIE = "sc_session"


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_framework(request: Request) -> Framework:
    framework: Framework = request.app.state.framework
    return framework


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def bearer_or_cookie(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie
    raise AuthError("sign in first: send 'Authorization: Bearer <token>' (see `sharedcare token`)")


def get_actor(request: Request, settings: Annotated[Settings, Depends(get_settings)],
              fw: Annotated[Framework, Depends(get_framework)]) -> Actor:
    claims = read_token(settings, bearer_or_cookie(request))
    return actor_for(fw, str(claims["sub"]))


def get_records(request: Request, actor: Annotated[Actor, Depends(get_actor)],
                fw: Annotated[Framework, Depends(get_framework)],
                db: Annotated[Database, Depends(get_database)]) -> Iterator[GovernedRecords]:
    with db.session() as session:
        yield GovernedRecords(session, fw, actor, purpose="direct-care", request_id=request.state.request_id,
                              source_address=request.client.host if request.client else None)


ActorDep = Annotated[Actor, Depends(get_actor)]
RecordsDep = Annotated[GovernedRecords, Depends(get_records)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
FrameworkDep = Annotated[Framework, Depends(get_framework)]
