"""The web UI's store on SQLite and on a real PostgreSQL: migrations, privacy, history, concurrency, votes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from parley.errors import ParleyError
from parley.eval.arena_battles import load_battles
from parley.eval.arena_ratings import bradley_terry
from parley.store.accounts import Accounts
from parley.store.conversations import Conversations, NotFound
from parley.store.database import MIGRATIONS, Database
from parley.store.models import Base, Conversation, Message, Vote
from parley.store.votes import Votes
from tests.conftest import REPO, run_parley

TABLES = {"users", "conversations", "messages", "votes", "feedback", "assistants", "collections",
          "assistant_collections", "documents", "chunks"}
HEAD = "0007"


def schema_differences(connection) -> list:
    """What the migrations made that the models do not describe, less the full-text index, which only the migration
    makes (an FTS5 table and its triggers on SQLite, a generated tsvector column and its index on PostgreSQL)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from parley.store.models import SEARCH_INDEX_COLUMNS, SEARCH_INDEX_TABLES

    def search_index(diff) -> bool:
        kind = diff[0]
        if kind == "remove_table":
            return diff[1].name in SEARCH_INDEX_TABLES
        if kind == "remove_column":
            return (diff[2], diff[3].name) in SEARCH_INDEX_COLUMNS
        if kind == "remove_index":
            return diff[1].name == "ix_chunks_search"
        return False

    return [d for d in compare_metadata(MigrationContext.configure(connection), Base.metadata)
            if not (isinstance(d, tuple) and search_index(d))]


def test_migrations_upgrade_an_empty_database_and_round_trip(db_url):
    database = Database(db_url)
    assert database.tables() == set() and database.revision() is None
    database.upgrade()
    assert TABLES <= database.tables() and database.revision() == HEAD
    with database.engine.connect() as connection:  # the migration and the models describe the same schema
        assert schema_differences(connection) == []
    database.downgrade()
    assert database.tables() & TABLES == set() and database.revision() is None
    database.upgrade()
    user = Accounts(database).local_user()
    Conversations(database).create(user.id, "m")
    assert len(Conversations(database).list(user.id)) == 1
    if database.is_sqlite:
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    database.close()


# Each process has everything imported and its engine connected, then waits for the start file: all of them run
# `upgrade()` at the same instant, as web processes started together on an empty database would. Every statement
# takes 10 ms longer (a slow disk, a bigger migration), so that the processes' migrations overlap every time.
UPGRADE_AT_ONCE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import event
    from parley.store import models
    from parley.store.database import Database
    db = Database(sys.argv[1])
    db.engine.connect().close()
    event.listen(db.engine, "before_cursor_execute", lambda *args: time.sleep(0.01))
    print("ready", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.0005)
    db.upgrade()
    print("at", db.revision(), flush=True)
""")


def test_several_processes_migrate_an_empty_database_at_once(db_url, tmp_path):
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", UPGRADE_AT_ONCE, db_url, str(start)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.communicate(timeout=60)
        start.touch()
        outcomes = [(*p.communicate(timeout=120), p.returncode) for p in procs]  # (stdout, stderr, exit status)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [next((line for line in reversed(err.splitlines()) if re.match(r"[\w.]+(Error|Exception): ", line)),
                   err[-300:]) for _, err, rc in outcomes if rc != 0]
    assert failed == [], f"{len(failed)} of {len(procs)} failed: {failed}"
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert [out.strip() for out, _, _ in outcomes] == [f"at {head}"] * len(procs)
    database = Database(db_url)
    assert TABLES <= database.tables() and database.revision() == head
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    database.close()


def test_history_titles_search_rename_export_and_delete(db):
    conversations = Conversations(db)
    me = Accounts(db).local_user().id
    first = conversations.create(me, "smollm2", system_prompt="Be brief.")
    conversations.add_message(me, first.id, "user", "What is the capital of   France?")
    reply = conversations.add_message(me, first.id, "assistant", "Paris.", model="smollm2",
                                      parameters={"temperature": 0.7}, completion_tokens=2, latency_s=0.4)
    second = conversations.create(me, "other")
    conversations.add_message(me, second.id, "user", "Tell me about the ```python``` fences — ünïcode too")
    listed = conversations.list(me)
    assert [c.id for c in listed] == [second.id, first.id]
    assert listed[1].title == "What is the capital of France?"
    assert [c.id for c in conversations.list(me, search="paris")] == [first.id]  # message text, any case
    assert [c.id for c in conversations.list(me, search="ünïcode")] == [second.id]
    conversations.rename(me, first.id, "Geography")
    with pytest.raises(ParleyError):
        conversations.rename(me, first.id, "   ")
    view = conversations.get(me, first.id)
    assert view.title == "Geography" and [m.content for m in view.messages] == ["What is the capital of   France?", "Paris."]
    assert view.messages[1].parameters == {"temperature": 0.7} and view.messages[1].completion_tokens == 2
    assert view.openai_messages()[0] == {"role": "system", "content": "Be brief."}
    exported = json.loads(conversations.export_json(me, first.id))
    assert exported["messages"][1]["content"] == "Paris." and exported["messages"][1]["id"] == reply.id
    markdown = conversations.export_markdown(me, first.id)
    assert markdown.startswith("# Geography") and "**smollm2**\n\nParis." in markdown
    conversations.delete(me, first.id)
    assert [c.id for c in conversations.list(me)] == [second.id]
    with pytest.raises(NotFound):
        conversations.get(me, first.id)


def test_a_user_cannot_see_or_touch_another_users_conversations(db):
    accounts, conversations, votes = Accounts(db), Conversations(db), Votes(db)
    alice = accounts.create("alice", "correct horse battery")
    bob = accounts.create("bob", "another long password")
    mine = conversations.create(alice.id, "m")
    message = conversations.add_message(alice.id, mine.id, "user", "secret plans")
    assert conversations.list(bob.id) == [] and conversations.list(bob.id, search="secret") == []
    for attempt in (lambda: conversations.get(bob.id, mine.id), lambda: conversations.rename(bob.id, mine.id, "x"),
                    lambda: conversations.delete(bob.id, mine.id),
                    lambda: conversations.add_message(bob.id, mine.id, "user", "hi"),
                    lambda: votes.feedback(bob.id, message.id, "downvote"),
                    lambda: votes.record(bob.id, "model_a", "a", "b", True, mine.id, None)):
        with pytest.raises(NotFound, match="no such"):
            attempt()
    with pytest.raises(NotFound):  # a made-up id reads the same as someone else's
        conversations.get(bob.id, uuid.uuid4().hex)
    assert conversations.get(alice.id, mine.id).messages[0].content == "secret plans"


def test_accounts_hash_passwords_with_argon2(db):
    accounts = Accounts(db)
    user = accounts.create("carol", "a good password", is_admin=True)
    assert user.password_hash.startswith("$argon2id$") and "a good password" not in user.password_hash
    assert accounts.authenticate("carol", "a good password").id == user.id
    assert accounts.authenticate("carol", "a bad password") is None and accounts.authenticate("nobody", "x" * 9) is None
    with pytest.raises(ParleyError, match="taken"):
        accounts.create("carol", "whatever password")
    with pytest.raises(ParleyError, match="at least"):
        accounts.create("dave", "short")
    with pytest.raises(ParleyError, match="username"):
        accounts.create("bad name!", "long enough password")


def test_concurrent_writers_lose_nothing(db):
    accounts, conversations, votes = Accounts(db), Conversations(db), Votes(db)
    users = [accounts.create(f"user{i}", "password-long-enough").id for i in range(6)]
    shared = conversations.create(users[0], "m")
    errors: list[BaseException] = []

    def work(user_id: int) -> None:
        try:
            for i in range(15):
                a = conversations.create(user_id, "model-a", mode="battle")
                b = conversations.create(user_id, "model-b", mode="battle")
                for c in (a, b):
                    conversations.add_message(user_id, c.id, "user", f"question {i}")
                    conversations.add_message(user_id, c.id, "assistant", f"answer {i}")
                votes.record(user_id, "model_a" if i % 2 else "tie", "model-a", "model-b", True, a.id, b.id)
                conversations.add_message(users[0], shared.id, "user", f"{user_id}-{i}")  # all into one
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Conversation)) == 6 * 15 * 2 + 1
        assert s.scalar(select(func.count()).select_from(Vote)) == 6 * 15
        assert s.scalar(select(func.count()).select_from(Message)) == 6 * 15 * 4 + 6 * 15
    positions = [m.position for m in conversations.get(users[0], shared.id).messages]
    assert positions == list(range(6 * 15))


def test_stored_votes_feed_ratings_and_export_as_fastchat_logs(db, db_url, tmp_path):
    accounts, conversations, votes = Accounts(db), Conversations(db), Votes(db)
    me = accounts.local_user().id
    for i, kind in enumerate(["model_a"] * 6 + ["model_b"] * 2 + ["tie", "tie (bothbad)"]):
        a, b = conversations.create(me, "strong", mode="battle"), conversations.create(me, "weak", mode="battle")
        for c, answer in ((a, "A fine answer."), (b, "An answer.")):
            conversations.add_message(me, c.id, "user", f"Question {i}?")
            conversations.add_message(me, c.id, "assistant", answer)
        votes.record(me, kind, "strong", "weak", True, a.id, b.id)
    message = conversations.get(me, a.id).messages[1]
    votes.feedback(me, message.id, "upvote")
    stats = votes.stats()
    assert stats.votes == 10 and stats.by_kind["model_a"] == 6 and stats.by_model == {"strong": 10, "weak": 10}
    assert stats.feedback == {"upvote": 1} and stats.users_voting == 1

    battles = votes.battles()
    assert len(battles) == 10 and battles[0].conversation_a[1] == {"role": "assistant", "content": "A fine answer."}
    ratings, _ = bradley_terry(battles)
    assert ratings["strong"] - ratings["weak"] == pytest.approx(400 * __import__("math").log10(7 / 3), abs=1e-6)

    log = tmp_path / "votes-conv.json"
    assert votes.export_fastchat_log(log) == 10
    reread, cleaning = load_battles([log])
    assert cleaning.battles == 10 and [b.winner for b in reread] == [b.winner for b in battles]

    out = tmp_path / "board"
    result = run_parley("eval", "ratings", "--db-url", db_url, "--output-dir", str(out), "--bootstrap-rounds", "50",
                        "--elo-rounds", "10", "--no-plots", timeout=180)
    assert result.returncode == 0, result.stderr
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["strong", "weak"] and board["battles"] == 10


def database_at_0002(db_url: str, contents: list[str]) -> Database:
    """A database at revision 0002 (before branches) with user 1 and conversation c1 of these messages (ids from
    10, user and assistant in turn)."""
    from sqlalchemy import text

    database = Database(db_url)
    database.upgrade("0002")
    with database.engine.begin() as c:
        c.execute(text("INSERT INTO users (id, username, is_admin, created_at) VALUES (1, 'old', false, '2026-01-01')"))
        c.execute(text("INSERT INTO conversations (id, user_id, title, mode, created_at, updated_at) "
                       "VALUES ('c1', 1, 'old chat', 'chat', '2026-01-01', '2026-01-01')"))
        for position, content in enumerate(contents):
            c.execute(text("INSERT INTO messages (id, conversation_id, position, role, content, created_at) "
                           "VALUES (:i, 'c1', :p, :r, :c, '2026-01-01')"),
                      {"i": 10 + position, "p": position, "r": ("user", "assistant")[position % 2], "c": content})
    return database


def test_conversations_stored_before_branches_existed_upgrade_to_one_branch(db_url):
    database = database_at_0002(db_url, ["q1", "a1", "q2", "a2"])
    database.upgrade()
    conversations = Conversations(database)
    view = conversations.get(1, "c1")
    assert [m.content for m in view.messages] == ["q1", "a1", "q2", "a2"]
    assert all(m.versions == [m.id] for m in view.messages)
    reply = conversations.begin_reply(1, "c1", "q3", model="m")
    assert [m.content for m in conversations.get(1, "c1").messages] == ["q1", "a1", "q2", "a2", "q3", ""]
    assert reply.position == 5
    database.downgrade("0002")  # and back: the branch shown survives
    database.close()


def test_migrations_keep_feedback_and_a_downgrade_keeps_the_branch_shown(db_url):
    from sqlalchemy import text

    database = database_at_0002(db_url, ["q1", "a1"])  # message ids 10 and 11
    with database.engine.begin() as c:
        c.execute(text("INSERT INTO feedback (user_id, message_id, kind, created_at) "
                       "VALUES (1, 11, 'upvote', '2026-01-01')"))
    database.upgrade()  # SQLite rebuilds the tables: their foreign-key actions must not run
    with database.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM feedback")).scalar() == 1
    conversations = Conversations(database)
    again = conversations.begin_reply(1, "c1", None, model="m")  # a new version of a1, shown from now on
    conversations.update_reply(1, again.id, "a1 again", finish_reason="stop")
    database.downgrade("0002")
    with database.engine.connect() as c:
        kept = c.execute(text("SELECT content FROM messages WHERE conversation_id = 'c1' ORDER BY position")).scalars()
        assert list(kept) == ["q1", "a1 again"]  # the branch shown, not the first one
        assert c.execute(text("SELECT count(*) FROM conversations")).scalar() == 1
    database.upgrade()
    assert [m.content for m in Conversations(database).get(1, "c1").messages] == ["q1", "a1 again"]
    database.close()
