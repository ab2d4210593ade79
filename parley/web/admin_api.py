"""Admins' pages under /api/admin: every account (approve, disable, grant or revoke admin, limits, a new
password), everyone's API keys and everyone's usage. Anyone else gets 403 admin_only. Without --auth the local
user is an admin."""

from __future__ import annotations

import asyncio
from datetime import date

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from parley.errors import ParleyError
from parley.serving.api_errors import APIError
from parley.store.accounts import UserView
from parley.store.api_keys import KeyView
from parley.store.conversations import NotFound
from parley.store.models import User
from parley.store.usage import UsageRow
from parley.web.account_api import UsageFormat, usage_answer
from parley.web.api_schemas import NewUser, PasswordReset, UserChange
from parley.web.json_api import SESSION_VERSION, _services, check_csrf, current_user


async def admin_user(user: User = Depends(current_user)) -> User:
    if not user.is_admin:
        raise APIError(403, "only an admin may do this", type="permission_error", code="admin_only")
    return user


def _no_user() -> APIError:
    return APIError(404, "no such user", code="not_found", param="user_id")


def build_admin_router() -> APIRouter:
    router = APIRouter(prefix="/api/admin", dependencies=[Depends(check_csrf), Depends(admin_user)])

    @router.get("/users", response_model=list[UserView])
    async def users(request: Request) -> list[UserView]:
        """Every account (pending ones are waiting for approval), by username."""
        return await asyncio.to_thread(_services(request).accounts.list)

    @router.post("/users", response_model=UserView, status_code=201)
    async def create_user(body: NewUser, request: Request) -> UserView:
        try:
            user = await asyncio.to_thread(_services(request).accounts.create, body.username, body.password,
                                           body.is_admin)
        except ParleyError as exc:
            raise APIError(400, str(exc), code="user_refused") from None
        return UserView.of(user)

    @router.patch("/users/{user_id}", response_model=UserView)
    async def change_user(user_id: int, body: UserChange, request: Request) -> UserView:
        """Approve (status active), disable (signed out everywhere), grant or revoke admin, set the limits. The
        last active admin stays one (409 last_admin)."""
        try:
            user = await asyncio.to_thread(_services(request).accounts.update, user_id, status=body.status,
                                           is_admin=body.is_admin, limits=body.limits)
        except NotFound:
            raise _no_user() from None
        except ParleyError as exc:
            raise APIError(409, str(exc), code="last_admin") from None
        return UserView.of(user)

    @router.post("/users/{user_id}/password", status_code=204)
    async def reset_password(user_id: int, body: PasswordReset, request: Request,
                             admin: User = Depends(admin_user)) -> None:
        """Set a user's password: the user's sessions end (the admin's own goes on, when it is theirs)."""
        services = _services(request)
        try:
            user = await asyncio.to_thread(services.accounts.set_password, user_id, body.password)
        except NotFound:
            raise _no_user() from None
        except ParleyError as exc:
            raise APIError(400, str(exc), code="password_refused") from None
        if services.settings.auth and user.id == admin.id:
            request.session[SESSION_VERSION] = user.session_version

    @router.get("/keys", response_model=list[KeyView])
    async def keys(request: Request) -> list[KeyView]:
        """Everyone's keys (revoked ones too), newest first."""
        return await asyncio.to_thread(_services(request).keys.list, None)

    @router.delete("/keys/{key_id}", response_model=KeyView)
    async def revoke_key(key_id: str, request: Request, admin: User = Depends(admin_user)) -> KeyView:
        try:
            return await asyncio.to_thread(_services(request).keys.revoke, admin, key_id)
        except NotFound:
            raise APIError(404, "no such key", code="not_found", param="key_id") from None

    @router.get("/usage", response_model=list[UsageRow], responses={200: {"content": {"text/csv": {}}}})
    async def usage(request: Request, by: str = Query("user,model,day", max_length=100),
                    user_id: int | None = None, since: date | None = None, until: date | None = None,
                    format: UsageFormat = "json") -> list[UsageRow] | Response:
        """Everyone's usage (or one user's), summed by any of user, key, model and day."""
        return await usage_answer(_services(request), by, user_id, since, until, format)

    return router
