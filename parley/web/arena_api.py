"""The web app's Arena under /api/arena: a round is one conversation per side (2 to 4), created together and
stored with the round's id; the same message goes to every side, the replies stream side by side in one event
stream, and a vote (two sides) reveals the names of an anonymous battle. Every round is the signed-in user's
own, as conversations are."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from parley.errors import ParleyError
from parley.serving.api_errors import APIError
from parley.store.conversations import FAILED, ConversationView, MessageView, NotFound
from parley.store.models import User
from parley.web.api_schemas import (
    ArenaMessage,
    BattleSide,
    BattleView,
    BattleVote,
    NewBattle,
    ReplyEnded,
    ReplyStarted,
    ReplyText,
    SideEvent,
    Stopped,
    TurnEnded,
)
from parley.web.arena import pick_pair
from parley.web.json_api import (
    _services,
    _sse,
    admit_reply,
    current_user,
    start_reply,
    stored_reply,
)
from parley.web.live_replies import Growth
from parley.web.services import WebServices
from parley.web.user_input import check_input

SIDES = "ABCD"
MAX_SIDES = 4


HIDDEN_ERROR = "this model failed to answer (its error names it, so it is shown after the vote)"


def _hidden(m: MessageView, anonymous: bool) -> MessageView:
    """The message without what names its model, while the names are hidden: errors name models too."""
    if not anonymous:
        return m
    return m.model_copy(update={"model": None, "error": HIDDEN_ERROR if m.error else None})


async def _sides(services: WebServices, user: User, battle_id: str) -> list[ConversationView]:
    sides = await asyncio.to_thread(services.conversations.battle, user.id, battle_id)
    if not sides:
        raise APIError(404, "no such Arena round", code="not_found", param="battle_id")
    return sides


def _why_no_vote(services: WebServices, sides: list[ConversationView], vote: str | None) -> str | None:
    if vote is not None:
        return "you voted on this round: start a new one"
    if len(sides) != 2:
        return "votes are for two models side by side"
    if any(services.live.busy(c.id) for c in sides):
        return "the replies are still being written"
    if not sides[0].messages:
        return "send a message first"
    failed = [SIDES[i] for i, c in enumerate(sides) if c.messages[-1].finish_reason == FAILED]
    if failed:
        return f"model {' and '.join(failed)} failed to answer: send another message or start a new round"
    return None


async def _view(services: WebServices, user: User, battle_id: str) -> BattleView:
    sides = await _sides(services, user, battle_id)
    anonymous = sides[0].mode == "battle"
    vote = await asyncio.to_thread(services.votes.kind_for, user.id, sides[0].id)
    hide = anonymous and vote is None
    return BattleView(
        id=battle_id, anonymous=anonymous, vote=vote, why_no_vote=_why_no_vote(services, sides, vote),
        sides=[BattleSide(label=SIDES[i], model=None if hide else c.model, conversation_id=c.id,
                          messages=[_hidden(m, hide) for m in c.messages]) for i, c in enumerate(sides)])


def build_arena_router() -> APIRouter:
    from parley.web.json_api import check_csrf, usable_assistant

    router = APIRouter(prefix="/api/arena", dependencies=[Depends(check_csrf)])
    voting: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()  # a lock per round

    @router.post("/battles", response_model=BattleView, status_code=201)
    async def new_battle(body: NewBattle, request: Request, user: User = Depends(current_user)) -> BattleView:
        """A new round: `models` names 2 to 4 models side by side, or none for an anonymous battle of two
        models drawn at random (by `--battle-weights`)."""
        services = _services(request)
        if body.models is None:
            names, _ = await services.client.models()
            names = names + [a.id for a in await asyncio.to_thread(services.assistants.for_battles)
                             if a.base_model in names]
            try:
                models = list(pick_pair(names, services.settings.battle_weights))
            except ParleyError as exc:
                raise APIError(503, str(exc), code="not_enough_models") from None
        else:
            models = body.models
            if len(set(models)) != len(models):
                raise APIError(400, "pick different models for each side", param="models")
            for model in models:
                await usable_assistant(services, user, model)
        battle_id = await asyncio.to_thread(services.conversations.create_battle, user.id, models,
                                            anonymous=body.models is None)
        return await _view(services, user, battle_id)

    @router.get("/battles/{battle_id}", response_model=BattleView)
    async def get_battle(battle_id: str, request: Request, user: User = Depends(current_user)) -> BattleView:
        return await _view(_services(request), user, battle_id)

    @router.post("/battles/{battle_id}/messages", response_class=StreamingResponse,
                 responses={200: {"content": {"text/event-stream": {}}}})
    async def send(battle_id: str, body: ArenaMessage, request: Request,
                   user: User = Depends(current_user)) -> StreamingResponse:
        """The same message to every side; their replies as one event stream: `started`, `text` and `ended`
        for each side (with its `side` index), then `turn` (whether the round can be voted on now)."""
        services = _services(request)
        sides = await _sides(services, user, battle_id)
        vote = await asyncio.to_thread(services.votes.kind_for, user.id, sides[0].id)
        if vote is not None:
            raise APIError(409, "you voted on this round: start a new one", code="round_voted")
        if any(services.live.busy(c.id) for c in sides):
            raise APIError(409, "the replies are still being written: stop them or wait", code="reply_in_progress")
        turns = sum(1 for m in sides[0].messages if m.role == "user")
        problem = await asyncio.to_thread(check_input, body.content, turns, services.settings.limits,
                                          services.moderator)
        if problem:
            raise APIError(400, problem, param="content", code="message_refused")
        anonymous = sides[0].mode == "battle"
        claimed = [c.id for c in sides if services.live.claim(c.id)]
        if len(claimed) < len(sides):
            for cid in claimed:
                services.live.release(cid)
            raise APIError(409, "the replies are still being written: stop them or wait", code="reply_in_progress")
        try:
            await admit_reply(services, user, "arena")  # a round counts once against the user's limits
            started = [await start_reply(services, user, c.id, body.content, c.model, body.parameters, admitted=True)
                       for c in sides]
        finally:
            for cid in claimed:
                services.live.release(cid)

        async def events() -> AsyncIterator[str]:
            queue: asyncio.Queue[tuple[int, Growth | None]] = asyncio.Queue()

            async def pump(side: int) -> None:
                try:
                    async for growth in started[side][1].follow():
                        await queue.put((side, growth))
                finally:
                    await queue.put((side, None))

            for side, (first, _) in enumerate(started):
                yield _sse("started", SideEvent(side=side, data=ReplyStarted(
                    conversation=first.conversation.model_copy(update={"model": None}) if anonymous else first.conversation,
                    user_message=first.user_message, reply=_hidden(first.reply, anonymous))))
            pumps = [asyncio.create_task(pump(side)) for side in range(len(started))]
            open_sides = len(started)
            try:
                while open_sides:
                    side, growth = await queue.get()
                    if growth is None:
                        open_sides -= 1
                        live = started[side][1]
                        await live.done.wait()
                        reply = await stored_reply(services, user, sides[side].id, live.reply_id)
                        if reply is not None:
                            yield _sse("ended", SideEvent(side=side, data=ReplyEnded(reply=_hidden(reply, anonymous))))
                        continue
                    yield _sse("text", SideEvent(side=side, data=ReplyText(text=growth.text, reasoning=growth.reasoning)))
            finally:
                for task in pumps:
                    task.cancel()
            view = await _view(services, user, battle_id)
            yield _sse("turn", TurnEnded(can_vote=view.why_no_vote is None, why_no_vote=view.why_no_vote))

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @router.post("/battles/{battle_id}/stop", response_model=Stopped)
    async def stop(battle_id: str, request: Request, user: User = Depends(current_user)) -> Stopped:
        services = _services(request)
        sides = await _sides(services, user, battle_id)
        stopped = [await services.live.stop(c.id) for c in sides]
        return Stopped(stopped=any(stopped))

    @router.post("/battles/{battle_id}/vote", response_model=BattleView)
    async def vote(battle_id: str, body: BattleVote, request: Request, user: User = Depends(current_user)) -> BattleView:
        """Vote on a round of two (once, after a turn both models answered); the names are revealed."""
        services = _services(request)
        lock = voting.setdefault(battle_id, asyncio.Lock())
        async with lock:  # two clicks at once: the second finds the first's vote
            view = await _view(services, user, battle_id)
            if view.why_no_vote is not None:
                raise APIError(409, f"this round cannot be voted on now: {view.why_no_vote}", code="no_vote")
            sides = await _sides(services, user, battle_id)
            try:
                await asyncio.to_thread(services.votes.record, user.id, body.kind, sides[0].model or "",
                                        sides[1].model or "", view.anonymous, sides[0].id, sides[1].id)
            except NotFound:
                raise APIError(404, "no such Arena round", code="not_found") from None
            return await _view(services, user, battle_id)

    return router
