"""The signed-in user's account under /api/account: who they are and what their limits have counted, their
password, their API keys and their usage (as a table or CSV). Without --auth it is the local user's."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from parley.errors import ParleyError
from parley.serving.api_errors import APIError
from parley.store.accounts import UserView
from parley.store.api_keys import KeyView, NewKey, user_scope
from parley.store.conversations import NotFound
from parley.store.models import User
from parley.store.usage import UsageRow, parse_groups, to_csv
from parley.web.api_schemas import AccountView, NewKeyRequest, PasswordChange
from parley.web.json_api import (
    SESSION_VERSION,
    _services,
    check_csrf,
    count_attempt,
    current_user,
)
from parley.web.services import WebServices

UsageFormat = Literal["json", "csv"]
CSV_NAME = "parley-usage.csv"


def groups(by: str) -> list[str]:
    """`by` as a list of GROUPS (user, key, model, day), in any order; 400 for anything else."""
    try:
        return parse_groups(by)
    except ValueError as exc:
        raise APIError(400, str(exc), param="by", code="invalid_group") from None


async def usage_answer(services: WebServices, by: str, user_id: int | None, since: date | None, until: date | None,
                       format: UsageFormat, own: bool = False) -> list[UsageRow] | Response:
    """Usage summed by `by` (from `since` to `until`, UTC days, both included): rows, or the same as a CSV file.
    `own`: a user's view of their own, which does not name the models of anonymous battles."""
    wanted = groups(by)
    if since is not None and until is not None and until < since:
        raise APIError(400, "until is before since", param="until")
    rows = await asyncio.to_thread(services.usage.summary, wanted, user_id, since, until, own)
    if format == "csv":
        return Response(to_csv(rows, wanted), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f"attachment; filename={CSV_NAME}"})
    return rows


def build_account_router() -> APIRouter:
    router = APIRouter(prefix="/api/account", dependencies=[Depends(check_csrf)])

    @router.get("", response_model=AccountView)
    async def account(request: Request, user: User = Depends(current_user)) -> AccountView:
        used = await asyncio.to_thread(_services(request).counters.used, user_scope(user))
        return AccountView(**UserView.of(user).model_dump(), used=used)

    @router.post("/password", status_code=204)
    async def change_password(body: PasswordChange, request: Request, user: User = Depends(current_user)) -> None:
        """A new password (the current one must be right): every other session of the user ends, this one
        goes on."""
        services = _services(request)
        if user.password_hash is None:
            raise APIError(400, "this account signs in without a password here", code="no_password")
        await count_attempt(request, "password", user.username)  # a session left open is no way to guess it
        try:
            changed = await asyncio.to_thread(services.accounts.change_password, user, body.current_password,
                                              body.new_password)
        except ParleyError as exc:
            raise APIError(400, str(exc), code="password_refused") from None
        if services.settings.auth:
            request.session[SESSION_VERSION] = changed.session_version

    @router.get("/keys", response_model=list[KeyView])
    async def keys(request: Request, user: User = Depends(current_user)) -> list[KeyView]:
        return await asyncio.to_thread(_services(request).keys.list, user)

    @router.post("/keys", response_model=NewKey, status_code=201)
    async def create_key(body: NewKeyRequest, request: Request, user: User = Depends(current_user)) -> NewKey:
        """A new key for the OpenAI API: its secret is in this answer only (parley keeps a hash of it)."""
        try:
            return await asyncio.to_thread(_services(request).keys.create, user, body)
        except ParleyError as exc:
            raise APIError(400, str(exc), code="key_refused") from None

    @router.delete("/keys/{key_id}", response_model=KeyView)
    async def revoke_key(key_id: str, request: Request, user: User = Depends(current_user)) -> KeyView:
        """Revoke one of the user's keys (the API stops taking it within seconds); revoking twice is harmless."""
        services = _services(request)
        own = {k.id for k in await asyncio.to_thread(services.keys.list, user)}
        if key_id not in own:  # an admin revokes others' keys under /api/admin/keys
            raise APIError(404, "no such key of yours", code="not_found", param="key_id")
        try:
            return await asyncio.to_thread(services.keys.revoke, user, key_id)
        except NotFound:
            raise APIError(404, "no such key of yours", code="not_found", param="key_id") from None

    @router.get("/usage", response_model=list[UsageRow],
                responses={200: {"content": {"text/csv": {}}}})
    async def usage(request: Request, by: str = Query("model,day", max_length=100), since: date | None = None,
                    until: date | None = None, format: UsageFormat = "json",
                    user: User = Depends(current_user)):
        """The user's own usage (API requests and web replies), summed by any of key, model and day."""
        return await usage_answer(_services(request), by, user.id, since, until, format, own=True)

    return router
