"""The web app's JSON API under /api: the session, the live model list, conversations and their replies.

Every route acts for the signed-in user (the one local user without `--auth`) and sees only that
user's conversations, as the store does. A session holds the user's id, the account's session version
(raised by a password change or reset and by disabling the account, which ends every session signed in
before) and when it signed in (a sign-in lasts `--session-hours`); each request checks all three. Requests
that change something carry the session's CSRF token in the X-CSRF-Token header. Errors are rendered as the
OpenAI API renders them. A reply streams as server-sent events: `started` (what was stored), `text` (each
piece as it is written: of the answer, and of a reasoning model's thinking apart from it) and `ended` (the reply as
stored); it is written by a task of its own, so a page that
goes away loses nothing. Each reply counts against the user's limits and is recorded as usage."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel

from parley.errors import ParleyError
from parley.serving.api_errors import APIError
from parley.serving.key_auth import limit_error
from parley.store.accounts import SignupPolicy
from parley.store.api_keys import user_scope
from parley.store.assistants import is_assistant_id
from parley.store.conversations import (
    ConversationSummary,
    ConversationView,
    MessageView,
    NotFound,
)
from parley.store.limits import LimitExceeded
from parley.store.models import User
from parley.store.usage import ANONYMOUS_BATTLE, UsageEvent
from parley.web.api_schemas import (
    AssistantEntry,
    ConversationChange,
    ConversationList,
    EditMessage,
    ExportFormat,
    FeedbackIn,
    FeedbackSaved,
    LoginRequest,
    ModelEntry,
    ModelList,
    NewConversation,
    OIDCInfo,
    ReplyEnded,
    ReplyOptions,
    ReplyStarted,
    ReplyText,
    SendMessage,
    SessionInfo,
    SignupRequest,
    SignupResult,
    Stopped,
    SwitchVersion,
)
from parley.web.live_replies import LiveReply, SoFar
from parley.web.model_client import ReplyParams
from parley.web.replies import StreamedReply
from parley.web.services import WebServices
from parley.web.user_input import check_input

SESSION_USER_ID, SESSION_VERSION, SESSION_SINCE, SESSION_CSRF = "user_id", "session_version", "signed_in_at", "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PENDING = "your account awaits an admin's approval"
DISABLED = "this account is disabled: ask an admin"


def _services(request: Request) -> WebServices:
    return request.app.state.services


def _csrf_token(request: Request) -> str:
    token = request.session.get(SESSION_CSRF)
    if not token:
        token = request.session[SESSION_CSRF] = secrets.token_urlsafe(32)
    return token


async def check_csrf(request: Request) -> None:
    """A request that changes something must send the session's token back (a page of another site cannot
    read it, so it cannot forge the request)."""
    if request.method in SAFE_METHODS:
        return
    expected, sent = request.session.get(SESSION_CSRF), request.headers.get("x-csrf-token")
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise APIError(403, "missing or wrong X-CSRF-Token header: reload the page (GET /api/session gives the token)",
                       type="permission_error", code="csrf_failed")


def sign_in(request: Request, user: User) -> None:
    """Start a new session for `user`: nothing of the session before it is kept (a CSRF token from before the
    sign-in is not valid after it)."""
    request.session.clear()
    request.session.update({SESSION_USER_ID: user.id, SESSION_VERSION: user.session_version,
                            SESSION_SINCE: int(time.time())})


def _signed_out(request: Request) -> None:
    for key in (SESSION_USER_ID, SESSION_VERSION, SESSION_SINCE):
        request.session.pop(key, None)


async def current_user(request: Request) -> User:
    """The signed-in user: 401 when the session has none, or no longer holds (the account is not active, its
    password changed or was reset since the sign-in, or the sign-in is older than --session-hours)."""
    services = _services(request)
    if not services.settings.auth:
        return await asyncio.to_thread(services.accounts.local_user)
    user_id = request.session.get(SESSION_USER_ID)
    if not isinstance(user_id, int):
        raise APIError(401, "sign in first", type="authentication_error", code="not_signed_in")
    user = await asyncio.to_thread(services.accounts.by_id, user_id)
    age_s = time.time() - request.session.get(SESSION_SINCE, 0)
    if (user is None or user.status != "active" or user.session_version != request.session.get(SESSION_VERSION)
            or not 0 <= age_s < services.settings.session_hours * 3600):
        _signed_out(request)
        raise APIError(401, "your session has ended: sign in again", type="authentication_error",
                       code="not_signed_in")
    return user


def session_info(request: Request, user: User | None) -> SessionInfo:
    settings = _services(request).settings
    oidc = OIDCInfo(name=settings.oidc.name) if settings.auth and settings.oidc else None
    signup: SignupPolicy = settings.signup if settings.auth else "closed"
    if user is None:
        return SessionInfo(signed_in=False, auth=settings.auth, csrf_token=_csrf_token(request), signup=signup,
                           oidc=oidc)
    return SessionInfo(signed_in=True, username=user.username, user_id=user.id, is_admin=user.is_admin,
                       auth=settings.auth, csrf_token=_csrf_token(request), signup=signup, oidc=oidc)


async def count_attempt(request: Request, what: str, username: str | None = None) -> None:
    """Count a sign-in (`what` "login") or sign-up attempt against its username's window and its client address's:
    429 too_many_attempts, with Retry-After, once either is past its limit. Every attempt counts, before the
    password is looked at, so the answer is the same whether or not the username exists."""
    services = _services(request)
    settings = services.settings
    address = request.client.host if request.client else "unknown"
    windows = [(f"{what}:address:{address}", settings.login_attempts_per_address)]
    if username is not None:
        windows.append((f"{what}:name:{username.lower()}", settings.login_attempts_per_name))

    def hit() -> int | None:
        waits = [services.counters.hit(scope, limit, settings.login_window_s) for scope, limit in windows]
        return max((w for w in waits if w is not None), default=None)

    wait = await asyncio.to_thread(hit)
    if wait is not None:
        raise APIError(429, f"too many attempts: try again in {_minutes(wait)}", type="requests",
                       code="too_many_attempts", headers={"Retry-After": str(wait)})


def _minutes(seconds: int) -> str:
    return f"{seconds} s" if seconds < 60 else f"{(seconds + 59) // 60} min"


def _sse(event: str, data: BaseModel) -> str:
    return f"event: {event}\ndata: {data.model_dump_json()}\n\n"


async def _conversation(services: WebServices, user: User, conversation_id: str) -> ConversationView:
    """A chat conversation of the user's. An Arena side is "not found" here: it is read through the Arena's
    routes, which keep an anonymous battle's names hidden until the vote."""
    try:
        conversation = await asyncio.to_thread(services.conversations.get, user.id, conversation_id)
    except NotFound as exc:
        raise APIError(404, str(exc), code="not_found", param="conversation_id") from None
    if conversation.mode != "chat":
        raise APIError(404, "no such conversation (an Arena round's sides are under /api/arena)", code="not_found",
                       param="conversation_id")
    return conversation


def build_router() -> APIRouter:
    router = APIRouter(prefix="/api", dependencies=[Depends(check_csrf)])

    @router.get("/session", response_model=SessionInfo)
    async def session(request: Request) -> SessionInfo:
        try:
            user = await current_user(request)
        except APIError:
            user = None
        return session_info(request, user)

    @router.post("/login", response_model=SessionInfo)
    async def login(body: LoginRequest, request: Request) -> SessionInfo:
        """Sign in with a password. Wrong: 401, the same whether or not the username exists; too many attempts
        for the username or from the address: 429; a pending or disabled account: 403 (said only to someone
        who knows its password)."""
        services = _services(request)
        if not services.settings.auth:
            raise APIError(400, "this server has no logins (it runs without --auth)", code="no_auth")
        await count_attempt(request, "login", body.username)
        user = await asyncio.to_thread(services.accounts.authenticate, body.username, body.password)
        if user is None:
            raise APIError(401, "wrong username or password", type="authentication_error", code="bad_credentials")
        if user.status == "pending":
            raise APIError(403, PENDING, type="permission_error", code="account_pending")
        if user.status != "active":
            raise APIError(403, DISABLED, type="permission_error", code="account_disabled")
        await asyncio.to_thread(services.accounts.signed_in, user.id)
        sign_in(request, user)
        return session_info(request, user)

    @router.post("/signup", response_model=SignupResult, status_code=201)
    async def signup(body: SignupRequest, request: Request) -> SignupResult:
        """Make an account, as `--signup` allows: open (signed in at once), approval (pending until an admin
        approves it) or closed (403)."""
        services = _services(request)
        policy = services.settings.signup
        if not services.settings.auth:
            raise APIError(400, "this server has no accounts (it runs without --auth)", code="no_auth")
        if policy == "closed":
            raise APIError(403, "sign-up is closed on this server: ask an admin for an account",
                           type="permission_error", code="signup_closed")
        await count_attempt(request, "signup")
        try:
            user = await asyncio.to_thread(services.accounts.sign_up, body.username, body.password, policy)
        except ParleyError as exc:
            raise APIError(400, str(exc), code="signup_refused") from None
        if user.status != "active":
            return SignupResult(status="pending", session=session_info(request, None))
        await asyncio.to_thread(services.accounts.signed_in, user.id)
        sign_in(request, user)
        return SignupResult(status="active", session=session_info(request, user))

    @router.post("/logout", response_model=SessionInfo)
    async def logout(request: Request) -> SessionInfo:
        request.session.clear()
        if _services(request).settings.auth:
            return session_info(request, None)
        return session_info(request, await current_user(request))

    @router.get("/models", response_model=ModelList)
    async def models(request: Request, user: User = Depends(current_user)) -> ModelList:
        services = _services(request)
        names, reachable = await services.client.models()
        entries = []
        for name in names:
            description, link = services.model_info.lookup(name)
            entries.append(ModelEntry(name=name, description=description, link=link))
        assistants = [AssistantEntry(id=a.id, name=a.name, description=a.description, base_model=a.base_model,
                                     starters=a.starters, temperature=a.temperature, top_p=a.top_p,
                                     max_tokens=a.max_tokens, knowledge=a.collection_names,
                                     available=a.base_model in names)
                      for a in await asyncio.to_thread(services.assistants.list, user)]
        return ModelList(models=entries, reachable=reachable, assistants=assistants)

    @router.get("/conversations", response_model=ConversationList)
    async def list_conversations(request: Request, q: str | None = Query(None, max_length=200),
                                 user: User = Depends(current_user)) -> ConversationList:
        found = await asyncio.to_thread(_services(request).conversations.list, user.id, q)
        return ConversationList(conversations=found)

    @router.post("/conversations", response_model=ConversationSummary, status_code=201)
    async def create_conversation(body: NewConversation, request: Request,
                                  user: User = Depends(current_user)) -> ConversationSummary:
        services = _services(request)
        assistant = await usable_assistant(services, user, body.model)
        return await asyncio.to_thread(services.conversations.create, user.id, body.model,
                                       system_prompt=body.system_prompt, title=body.title, assistant_id=assistant)

    @router.get("/conversations/{conversation_id}", response_model=ConversationView)
    async def get_conversation(conversation_id: str, request: Request,
                               user: User = Depends(current_user)) -> ConversationView:
        return await _conversation(_services(request), user, conversation_id)

    @router.patch("/conversations/{conversation_id}", response_model=ConversationView)
    async def change_conversation(conversation_id: str, body: ConversationChange, request: Request,
                                  user: User = Depends(current_user)) -> ConversationView:
        services = _services(request)
        await _conversation(services, user, conversation_id)
        try:
            await asyncio.to_thread(services.conversations.change, user.id, conversation_id,
                                    **body.model_dump(exclude_unset=True))
        except NotFound as exc:
            raise APIError(404, str(exc), code="not_found") from None
        except ParleyError as exc:
            raise APIError(400, str(exc)) from None
        return await _conversation(services, user, conversation_id)

    @router.delete("/conversations/{conversation_id}", status_code=204)
    async def delete_conversation(conversation_id: str, request: Request, user: User = Depends(current_user)) -> None:
        services = _services(request)
        await _conversation(services, user, conversation_id)
        await services.live.stop(conversation_id)
        with contextlib.suppress(NotFound):  # deleted meanwhile by another request: the same outcome
            await asyncio.to_thread(services.conversations.delete, user.id, conversation_id)

    @router.get("/conversations/{conversation_id}/export")
    async def export_conversation(conversation_id: str, request: Request, format: ExportFormat = "json",
                                  user: User = Depends(current_user)) -> PlainTextResponse:
        services = _services(request)
        await _conversation(services, user, conversation_id)
        exporter = services.conversations.export_json if format == "json" else services.conversations.export_markdown
        text = await asyncio.to_thread(exporter, user.id, conversation_id)
        suffix, media = ("json", "application/json") if format == "json" else ("md", "text/markdown")
        return PlainTextResponse(text, media_type=media, headers={
            "Content-Disposition": f'attachment; filename="conversation-{conversation_id[:8]}.{suffix}"'})

    @router.post("/conversations/{conversation_id}/messages", response_class=StreamingResponse,
                 responses={200: {"content": {"text/event-stream": {}}}})
    async def send_message(conversation_id: str, body: SendMessage, request: Request,
                           user: User = Depends(current_user)) -> StreamingResponse:
        services = _services(request)
        conversation = await _writable(services, user, conversation_id)
        turns = sum(1 for m in conversation.messages if m.role == "user")
        problem = await asyncio.to_thread(check_input, body.content, turns, services.settings.limits,
                                          services.moderator)
        if problem:
            raise APIError(400, problem, param="content", code="message_refused")
        claim(services, conversation_id)
        return await _reply(services, user, conversation_id, body.content, body.model, body.parameters)

    @router.post("/conversations/{conversation_id}/regenerate", response_class=StreamingResponse,
                 responses={200: {"content": {"text/event-stream": {}}}})
    async def regenerate(conversation_id: str, body: ReplyOptions, request: Request,
                         user: User = Depends(current_user)) -> StreamingResponse:
        services = _services(request)
        conversation = await _writable(services, user, conversation_id)
        if not any(m.role == "user" for m in conversation.messages):
            raise APIError(400, "there is no message to answer yet", code="nothing_to_regenerate")
        claim(services, conversation_id)
        return await _reply(services, user, conversation_id, None, body.model, body.parameters)

    @router.post("/conversations/{conversation_id}/messages/{message_id}/edit", response_class=StreamingResponse,
                 responses={200: {"content": {"text/event-stream": {}}}})
    async def edit_message(conversation_id: str, message_id: int, body: EditMessage, request: Request,
                           user: User = Depends(current_user)) -> StreamingResponse:
        """Edit-and-resend: a new version of the question `message_id`, answered anew; the branch it replaces
        stays reachable through the question's versions."""
        services = _services(request)
        conversation = await _writable(services, user, conversation_id)
        index = next((i for i, m in enumerate(conversation.messages) if m.id == message_id and m.role == "user"), None)
        if index is None:
            raise APIError(404, "no such question in the branch shown", code="not_found", param="message_id")
        turns = sum(1 for m in conversation.messages[:index] if m.role == "user")
        problem = await asyncio.to_thread(check_input, body.content, turns, services.settings.limits,
                                          services.moderator)
        if problem:
            raise APIError(400, problem, param="content", code="message_refused")
        claim(services, conversation_id)
        return await _reply(services, user, conversation_id, body.content, body.model, body.parameters,
                            edits=message_id)

    @router.post("/conversations/{conversation_id}/messages/{message_id}/feedback", response_model=FeedbackSaved,
                 status_code=201)
    async def feedback(conversation_id: str, message_id: int, body: FeedbackIn, request: Request,
                       user: User = Depends(current_user)) -> FeedbackSaved:
        """Upvote, downvote or flag a reply (stored with the reply, for review and `parley db stats`)."""
        services = _services(request)
        conversation = await _conversation(services, user, conversation_id)
        if not any(m.id == message_id and m.role == "assistant" for m in conversation.messages):
            raise APIError(404, "no such reply in the branch shown", code="not_found", param="message_id")
        saved = await asyncio.to_thread(services.votes.feedback, user.id, message_id, body.kind, body.comment)
        return FeedbackSaved(id=saved)

    @router.post("/conversations/{conversation_id}/switch", response_model=ConversationView)
    async def switch_version(conversation_id: str, body: SwitchVersion, request: Request,
                             user: User = Depends(current_user)) -> ConversationView:
        """Show another version: the branch through `message_id` (its newest continuation)."""
        services = _services(request)
        await _writable(services, user, conversation_id)
        try:
            return await asyncio.to_thread(services.conversations.switch, user.id, conversation_id, body.message_id)
        except NotFound as exc:
            raise APIError(404, str(exc), code="not_found", param="message_id") from None

    @router.post("/conversations/{conversation_id}/continue", response_class=StreamingResponse,
                 responses={200: {"content": {"text/event-stream": {}}}})
    async def continue_reply(conversation_id: str, body: ReplyOptions, request: Request,
                             user: User = Depends(current_user)) -> StreamingResponse:
        """Continue the last reply (one cut at its token limit): the model goes on with its text."""
        services = _services(request)
        conversation = await _writable(services, user, conversation_id)
        last = conversation.messages[-1] if conversation.messages else None
        if last is None or last.role != "assistant" or not last.content:
            raise APIError(400, "there is no reply to continue", code="nothing_to_continue")
        claim(services, conversation_id)
        return await _reply(services, user, conversation_id, None, body.model, body.parameters, continuing=True)

    @router.get("/conversations/{conversation_id}/reply", response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}}}})
    async def follow_reply(conversation_id: str, request: Request, user: User = Depends(current_user)) -> StreamingResponse:
        """The reply being written in this conversation (for a page opened while it streams): its text so
        far, then as it grows, then `ended`. 404 when none is being written."""
        services = _services(request)
        conversation = await _conversation(services, user, conversation_id)
        live = services.live.get(conversation_id)
        if live is None:
            raise APIError(404, "no reply is being written in this conversation", code="no_reply")
        reply = next(m for m in conversation.messages if m.id == live.reply_id).model_copy(
            update={"content": live.base.text, "reasoning": live.base.reasoning or None})
        started = ReplyStarted(conversation=conversation, user_message=None, reply=reply)
        return _stream(services, user, conversation_id, started, live)

    @router.post("/conversations/{conversation_id}/stop", response_model=Stopped)
    async def stop(conversation_id: str, request: Request, user: User = Depends(current_user)) -> Stopped:
        services = _services(request)
        await _conversation(services, user, conversation_id)
        return Stopped(stopped=await services.live.stop(conversation_id))

    return router


async def usable_assistant(services: WebServices, user: User, model: str | None) -> str | None:
    """The assistant's id when `model` names one the user may use (404 when not); None for a plain model."""
    if not is_assistant_id(model):
        return None
    try:
        return (await asyncio.to_thread(services.assistants.get, user, model)).id
    except NotFound:
        raise APIError(404, f"no such assistant: {model}", code="model_not_found", param="model") from None


IN_PROGRESS = "a reply is still being written in this conversation: stop it or wait for it"


async def _writable(services: WebServices, user: User, conversation_id: str) -> ConversationView:
    """The conversation, refused (409) while a reply is being written in it."""
    conversation = await _conversation(services, user, conversation_id)
    if services.live.busy(conversation_id):
        raise APIError(409, IN_PROGRESS, code="reply_in_progress")
    return conversation


def claim(services: WebServices, conversation_id: str) -> None:
    """Take the conversation for a new reply (409 when one is being written); `start_reply` ends the claim."""
    if not services.live.claim(conversation_id):
        raise APIError(409, IN_PROGRESS, code="reply_in_progress")


async def _reply(services: WebServices, user: User, conversation_id: str, text: str | None, model: str,
                 params: ReplyParams, edits: int | None = None, continuing: bool = False) -> StreamingResponse:
    """Start the reply (`start_reply`) and stream it."""
    started, live = await start_reply(services, user, conversation_id, text, model, params, edits, continuing)
    return _stream(services, user, conversation_id, started, live)


async def admit_reply(services: WebServices, user: User, model: str) -> None:
    """Count a reply against the user's own limits (requests and tokens per minute, token budget), which their
    API keys count against too: a 429 as the API gives when over one, before anything is stored (the refusal
    is recorded as usage with status 429)."""
    scope = user_scope(user)
    if not scope.limits.any:
        return
    try:
        await asyncio.to_thread(services.counters.admit, [scope])
    except LimitExceeded as exc:
        services.usage_recorder.record(UsageEvent(source="web", endpoint="web", model=model, status=429,
                                                  latency_ms=0.0, user_id=user.id))
        raise limit_error(exc) from None


# What a web reply's usage is recorded under, by its conversation's mode.
USAGE_ENDPOINTS = {"chat": "web", "side-by-side": "arena", "battle": ANONYMOUS_BATTLE}


async def start_reply(services: WebServices, user: User, conversation_id: str, text: str | None, model: str,
                      params: ReplyParams, edits: int | None = None, continuing: bool = False,
                      admitted: bool = False) -> tuple[ReplyStarted, LiveReply]:
    """Store the user's message (None: regenerate the last reply; `edits`: as a new version of that question)
    and an empty reply (`continuing`: reopen the last reply), and start writing the reply. It is first counted
    against the user's limits (`admit_reply`) unless the caller did (`admitted`: an Arena round counts once for
    its sides). The conversation must be claimed (`claim`); the claim ends here, whatever happens."""
    try:
        if not admitted:
            await admit_reply(services, user, model)
        return await _start_reply(services, user, conversation_id, text, model, params, edits, continuing)
    finally:
        services.live.release(conversation_id)


async def _start_reply(services: WebServices, user: User, conversation_id: str, text: str | None, model: str,
                       params: ReplyParams, edits: int | None, continuing: bool) -> tuple[ReplyStarted, LiveReply]:
    details = {"model": model, "parameters": params.model_dump()}
    try:
        if continuing:
            reply = await asyncio.to_thread(services.conversations.continue_reply, user.id, conversation_id,
                                            **details)
        elif edits is not None:
            _, reply = await asyncio.to_thread(services.conversations.edit, user.id, conversation_id, edits, text,
                                               **details)
        else:
            reply = await asyncio.to_thread(services.conversations.begin_reply, user.id, conversation_id, text,
                                            **details)
    except NotFound as exc:
        raise APIError(404, str(exc), code="not_found") from None
    conversation = await asyncio.to_thread(services.conversations.get, user.id, conversation_id)
    context = conversation.openai_messages(before=None if continuing else reply.id)
    # what Continue goes on from: continue_reply stored its text without trailing space; its reasoning stays
    base = SoFar(reply.content, reply.reasoning or "") if continuing else SoFar()
    index = next(i for i, m in enumerate(conversation.messages) if m.id == reply.id)
    reply = conversation.messages[index]  # with its versions
    asked = conversation.messages[index - 1] if text is not None and index else None

    async def write(grew) -> None:
        streamed = StreamedReply(services, user.id, reply.id, model, params, base=base)
        try:
            async with contextlib.aclosing(streamed.stream(context)) as growing:
                async for so_far in growing:
                    grew(so_far)
        finally:
            try:
                await streamed.save_final()
            finally:  # also for a reply stopped (or cut by shutdown) while it was being stored
                services.usage_recorder.record(streamed.usage_event(user_scope(user), USAGE_ENDPOINTS[conversation.mode]))

    live = services.live.start(conversation_id, reply.id, write, base=base)
    return ReplyStarted(conversation=conversation, user_message=asked, reply=reply), live


def _stream(services: WebServices, user: User, conversation_id: str, started: ReplyStarted,
            live: LiveReply) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        yield _sse("started", started)
        async for growth in live.follow():
            yield _sse("text", ReplyText(text=growth.text, reasoning=growth.reasoning))
        await live.done.wait()
        ended = await stored_reply(services, user, conversation_id, live.reply_id)
        if ended is not None:
            yield _sse("ended", ReplyEnded(reply=ended))

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def stored_reply(services: WebServices, user: User, conversation_id: str, reply_id: int) -> MessageView | None:
    try:
        conversation = await asyncio.to_thread(services.conversations.get, user.id, conversation_id)
    except NotFound:  # deleted while the reply was written
        return None
    return next((m for m in conversation.messages if m.id == reply_id), None)
