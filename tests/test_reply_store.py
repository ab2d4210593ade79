"""Replies in the store: kept as they stream, marked when incomplete, and never leaving a conversation that cannot be
continued or regenerated; and the reply slots that bound how many stream at once."""

from __future__ import annotations

import asyncio

import pytest

from parley.store.accounts import Accounts
from parley.store.conversations import (
    FAILED,
    INCOMPLETE,
    STOPPED,
    Conversations,
    NotFound,
)
from parley.store.database import Database
from parley.web.reply_slots import Busy, ReplySlots


@pytest.fixture
def store(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    db.upgrade()
    yield Conversations(db), Accounts(db).local_user().id
    db.close()


def roles(conversations, me, cid) -> list[str]:
    return [m.role for m in conversations.get(me, cid).messages]


def test_a_failed_reply_keeps_the_question_and_the_conversation_goes_on(store):
    conversations, me = store
    cid = conversations.create(me, "m").id
    reply = conversations.begin_reply(me, cid, "First question?", model="m")
    assert roles(conversations, me, cid) == ["user", "assistant"]  # stored together, before any token
    assert conversations.get(me, cid).messages[-1].finish_reason == INCOMPLETE
    conversations.update_reply(me, reply.id, "", finish_reason=FAILED, error="no worker is serving the model")

    second = conversations.begin_reply(me, cid, "Second question?", model="m")
    view = conversations.get(me, cid)
    # the model is asked the new question; the unanswered one is shown to the user, not given to the model
    assert view.openai_messages(before=second.id) == [{"role": "user", "content": "Second question?"}]
    # the failure stays where it happened, with why
    assert [(m.role, m.finish_reason) for m in view.messages] == [("user", None), ("assistant", FAILED),
                                                                  ("user", None), ("assistant", INCOMPLETE)]
    assert view.messages[1].error == "no worker is serving the model"


def test_regenerate_keeps_the_earlier_reply_as_a_version(store):
    conversations, me = store
    cid = conversations.create(me, "m").id
    first = conversations.begin_reply(me, cid, "Q", model="m")
    conversations.update_reply(me, first.id, "partial", finish_reason=STOPPED)
    again = conversations.begin_reply(me, cid, None, model="m")
    assert again.id != first.id and again.content == "" and again.finish_reason == INCOMPLETE
    assert roles(conversations, me, cid) == ["user", "assistant"]
    view = conversations.get(me, cid)
    assert view.openai_messages(before=again.id) == [{"role": "user", "content": "Q"}]
    assert view.messages[-1].id == again.id and view.messages[-1].versions == [first.id, again.id]
    conversations.update_reply(me, again.id, "complete", finish_reason="stop")
    back = conversations.switch(me, cid, first.id)
    assert [m.content for m in back.messages] == ["Q", "partial"]
    assert [m.content for m in conversations.get(me, cid).messages] == ["Q", "partial"]  # the switch is stored


def test_a_reply_that_failed_with_nothing_written_is_replaced_in_place(store):
    conversations, me = store
    cid = conversations.create(me, "m").id
    failed = conversations.begin_reply(me, cid, "Q", model="m")
    conversations.update_reply(me, failed.id, "", finish_reason=FAILED, error="no worker")
    again = conversations.begin_reply(me, cid, None, model="m")
    assert again.id == failed.id and again.error is None
    assert conversations.get(me, cid).messages[-1].versions == [failed.id]


def test_edit_and_resend_branches_and_the_earlier_branch_stays_reachable(store):
    conversations, me = store
    cid = conversations.create(me, "m").id
    a1 = conversations.begin_reply(me, cid, "first question", model="m")
    conversations.update_reply(me, a1.id, "first answer", finish_reason="stop")
    a2 = conversations.begin_reply(me, cid, "second question", model="m")
    conversations.update_reply(me, a2.id, "second answer", finish_reason="stop")
    q1 = conversations.get(me, cid).messages[0]
    asked, reply = conversations.edit(me, cid, q1.id, "first question, edited", model="m")
    view = conversations.get(me, cid)
    assert [m.content for m in view.messages] == ["first question, edited", ""]
    assert view.messages[0].versions == [q1.id, asked.id] and view.messages[1].id == reply.id
    assert view.openai_messages(before=reply.id) == [{"role": "user", "content": "first question, edited"}]
    old = conversations.switch(me, cid, q1.id)  # the whole earlier branch, down to its last message
    assert [m.content for m in old.messages] == ["first question", "first answer", "second question", "second answer"]
    with pytest.raises(NotFound):
        conversations.edit(me, cid, old.messages[1].id, "not a question")  # only a user's message is edited


def test_feedback_stays_with_the_version_it_rated(store):
    from parley.store.votes import Votes

    conversations, me = store
    cid = conversations.create(me, "m").id
    reply = conversations.begin_reply(me, cid, "Q", model="m")
    conversations.update_reply(me, reply.id, "A bad answer", finish_reason="stop")
    votes = Votes(conversations.db)
    votes.feedback(me, reply.id, "downvote")
    conversations.begin_reply(me, cid, None, model="m")  # a new version; the downvoted one is still there
    assert votes.stats().feedback == {"downvote": 1}


def test_a_conversation_stored_with_two_user_turns_in_a_row_can_still_be_continued(store):
    """What earlier versions left after a failed reply: user, assistant, user, user."""
    conversations, me = store
    cid = conversations.create(me, "m").id
    for role, text in (("user", "A?"), ("assistant", "a."), ("user", "B?"), ("user", "C?")):
        conversations.add_message(me, cid, role, text)
    assert [m["content"] for m in conversations.get(me, cid).openai_messages()] == ["A?", "a.", "C?"]
    reply = conversations.begin_reply(me, cid, "D?", model="m")
    context = conversations.get(me, cid).openai_messages(before=reply.id)
    assert [m["content"] for m in context] == ["A?", "a.", "D?"]


def test_a_stopped_reply_with_text_stays_in_the_context(store):
    conversations, me = store
    cid = conversations.create(me, "m").id
    first = conversations.begin_reply(me, cid, "Q1", model="m")
    conversations.update_reply(me, first.id, "Half an ans", finish_reason=STOPPED)
    second = conversations.begin_reply(me, cid, "Q2", model="m")
    assert [m["content"] for m in conversations.get(me, cid).openai_messages(before=second.id)] == [
        "Q1", "Half an ans", "Q2"]


def test_one_user_cannot_write_into_another_users_reply(store):
    conversations, me = store
    cid = conversations.create(me, "m").id
    reply = conversations.begin_reply(me, cid, "Q", model="m")
    with pytest.raises(Exception, match="no such"):
        conversations.update_reply(me + 1000, reply.id, "hijacked")
    assert conversations.get(me, cid).messages[-1].content == ""


async def test_reply_slots_run_up_to_the_limit_queue_a_bounded_line_and_refuse_beyond_it():
    slots = ReplySlots(max_running=2, max_waiting=1)
    release = asyncio.Event()
    started: list[int] = []

    async def reply(i: int):
        async with slots.hold():
            started.append(i)
            await release.wait()

    tasks = [asyncio.create_task(reply(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert started == [0, 1] and slots.running == 2 and slots.waiting == 1
    with pytest.raises(Busy, match="try again"):
        async with slots.hold():
            pass
    release.set()
    await asyncio.gather(*tasks)
    assert started == [0, 1, 2] and slots.running == 0 and slots.waiting == 0


async def test_a_waiting_reply_that_is_cancelled_gives_its_place_up():
    slots = ReplySlots(max_running=1, max_waiting=2)
    release = asyncio.Event()

    async def reply():
        async with slots.hold():
            await release.wait()

    running = asyncio.create_task(reply())
    waiting = asyncio.create_task(reply())
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert slots.waiting == 0
    release.set()
    await running
    assert slots.running == 0
