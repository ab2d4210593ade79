"""The store behind running parley for a team, on SQLite and on a real PostgreSQL: accounts' sign-up and status,
API keys (hashed, revocable), rate limits counted in the database (exact under concurrency), and usage."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timezone

import pytest
from sqlalchemy import select

from parley.errors import ParleyError
from parley.store.accounts import Accounts
from parley.store.api_keys import ApiKeys, KeySpec, hash_key, user_scope
from parley.store.conversations import NotFound
from parley.store.limits import Counters, LimitExceeded, Limits, Scope, period_bucket
from parley.store.models import ApiKey
from parley.store.usage import Usage, UsageEvent, UsageRecorder, to_csv

PASSWORD = "correct horse battery"


def test_sign_up_follows_the_policy_and_admins_approve_and_disable(db):
    accounts = Accounts(db)
    with pytest.raises(ParleyError, match="sign-up is closed"):
        accounts.sign_up("carol", PASSWORD, "closed")
    assert accounts.sign_up("dave", PASSWORD, "open").status == "active"
    erin = accounts.sign_up("erin", PASSWORD, "approval")
    assert erin.status == "pending"
    admin = accounts.create("root", PASSWORD, is_admin=True)
    assert accounts.update(erin.id, status="active").status == "active"
    before = accounts.by_id(erin.id).session_version
    assert accounts.update(erin.id, status="disabled").session_version == before + 1  # signed out everywhere
    with pytest.raises(ParleyError, match="last active admin"):
        accounts.update(admin.id, is_admin=False)
    accounts.update(erin.id, status="active", is_admin=True)
    assert accounts.update(admin.id, is_admin=False).is_admin is False  # another admin exists now
    assert [u.username for u in accounts.list()] == ["dave", "erin", "root"]


def test_password_change_needs_the_current_one_and_ends_other_sessions(db):
    accounts = Accounts(db)
    user = accounts.create("frank", PASSWORD)
    with pytest.raises(ParleyError, match="current password is wrong"):
        accounts.change_password(user, "not it at all", "a new password")
    with pytest.raises(ParleyError, match="at least 8"):
        accounts.change_password(user, PASSWORD, "short")
    changed = accounts.change_password(user, PASSWORD, "a new password")
    assert changed.session_version == user.session_version + 1
    assert accounts.authenticate("frank", PASSWORD) is None
    assert accounts.authenticate("frank", "a new password") is not None


def test_an_oidc_identity_maps_to_one_account(db):
    accounts = Accounts(db)
    accounts.create("grace", PASSWORD)  # a password account of the same name: not taken over
    first = accounts.oidc_user("https://idp.example", "sub-1", "grace", "open")
    assert first.username == "grace2" and first.status == "active" and first.password_hash is None
    assert accounts.oidc_user("https://idp.example", "sub-1", "renamed", "open").id == first.id
    assert accounts.oidc_user("https://other.example", "sub-1", "grace", "approval").status == "pending"
    with pytest.raises(ParleyError, match="sign-up is closed"):
        accounts.oidc_user("https://idp.example", "sub-2", "heidi", "closed")
    assert accounts.authenticate("grace2", "") is None  # no password to sign in with


def test_keys_are_stored_as_hashes_and_revoked_keys_grant_nothing(db):
    accounts, keys = Accounts(db), ApiKeys(db)
    ivan, judy = accounts.create("ivan", PASSWORD), accounts.create("judy", PASSWORD)
    made = keys.create(ivan, KeySpec(name="ci", rpm=5, models=["m1"]))
    assert made.secret.startswith("sk-parley-") and len(made.secret) == 50
    with db.session() as s:
        row = s.scalar(select(ApiKey))
        assert row.secret_hash == hash_key(made.secret) and made.secret not in (row.prefix, row.secret_hash)
    grant = keys.grant(made.secret)
    assert grant.username == "ivan" and grant.key_limits.rpm == 5
    assert grant.may_use("m1") and not grant.may_use("m2")
    assert keys.grant(made.secret + "x") is None and keys.grant("sk-other") is None
    with pytest.raises(NotFound):
        keys.revoke(judy, made.key.id)  # not hers
    assert keys.revoke(ivan, made.key.id).revoked_at is not None
    assert keys.grant(made.secret) is None
    other = keys.create(ivan, KeySpec(name="second"))
    accounts.update(ivan.id, status="disabled")
    assert keys.grant(other.secret) is None  # a disabled user's keys stop working
    assert [k.name for k in keys.list(ivan)] == ["second", "ci"]


def test_fifty_requests_at_once_against_ten_per_minute_admit_exactly_ten(db):
    counters = Counters(db)
    scope = Scope("key:k1", "the API key 'k1'", Limits(rpm=10))
    now = time.time()

    def attempt(_):
        try:
            counters.admit([scope], now)
            return True
        except LimitExceeded as exc:
            assert "10 requests per minute" in exc.message and 1 <= exc.retry_after_s <= 61
            return False

    with ThreadPoolExecutor(16) as pool:
        admitted = sum(pool.map(attempt, range(50)))
    assert admitted == 10
    assert counters.used(scope, now).requests_this_minute == 10  # refused ones counted nothing
    counters.admit([scope], now + 60)  # the next minute admits again


def test_a_refused_scope_counts_nothing_for_the_others(db):
    counters = Counters(db)
    key = Scope("key:k2", "the key", Limits(rpm=100))
    user = Scope("user:1", "the user", Limits(rpm=1))
    now = time.time()
    counters.admit([key, user], now)
    with pytest.raises(LimitExceeded, match="the user: 1 requests per minute"):
        counters.admit([key, user], now)
    assert counters.used(key, now).requests_this_minute == 1


def test_tokens_per_minute_and_budgets_refuse_once_crossed(db):
    counters, usage = Counters(db), Usage(db)
    now = time.time()
    tpm = Scope("key:t", "the key 't'", Limits(tpm=100))
    budget = Scope("user:9", "the user 'u'", Limits(token_budget=1000, budget_period="day"))
    counters.admit([tpm, budget], now)
    usage.write([UsageEvent("api", "/v1/chat/completions", "m", 200, 5.0, 60, 50, charge=[tpm, budget], at=now)])
    with pytest.raises(LimitExceeded, match="100 tokens per minute") as refused:
        counters.admit([tpm], now)
    assert not refused.value.quota
    counters.admit([budget], now)
    usage.write([UsageEvent("web", "web", "m", 200, 5.0, 500, 400, charge=[budget], at=now)])
    with pytest.raises(LimitExceeded, match="token budget") as spent:
        counters.admit([budget], now)
    assert spent.value.quota
    tomorrow = period_bucket(now, "day")[1] + 1
    counters.admit([budget], tomorrow)


def test_usage_sums_by_user_key_model_and_day(db):
    accounts, keys, usage = Accounts(db), ApiKeys(db), Usage(db)
    kim, leo = accounts.create("kim", PASSWORD), accounts.create("leo", PASSWORD)
    key = keys.create(kim, KeySpec(name="laptop")).key
    day1 = datetime(2026, 11, 30, 23, 59, tzinfo=timezone.utc).timestamp()
    day2 = datetime(2026, 12, 1, 0, 1, tzinfo=timezone.utc).timestamp()
    usage.write([
        UsageEvent("api", "/v1/chat/completions", "a", 200, 10, 3, 7, kim.id, key.id, at=day1),
        UsageEvent("api", "/v1/chat/completions", "a", 429, 1, 0, 0, kim.id, key.id, at=day2),
        UsageEvent("web", "web", "b", 200, 30, 5, 5, kim.id, at=day2),
        UsageEvent("web", "web", "a", 200, 20, 1, 1, leo.id, at=day2),
    ])
    by_user = {r.user: r for r in usage.summary(["user"])}
    assert by_user["kim"].requests == 3 and by_user["kim"].total_tokens == 20 and by_user["kim"].errors == 1
    assert by_user["leo"].total_tokens == 2
    days = usage.summary(["day", "model"], user_id=kim.id)
    assert [(r.day, r.model, r.total_tokens) for r in days] == [
        (date(2026, 11, 30), "a", 10), (date(2026, 12, 1), "a", 0), (date(2026, 12, 1), "b", 10)]
    by_key = usage.summary(["key"], user_id=kim.id)
    assert {(r.key, r.key_id, r.requests) for r in by_key} == {("laptop", key.id, 2), (None, None, 1)}
    assert usage.summary(["model"], since=date(2026, 12, 1), until=date(2026, 12, 1))[0].requests == 2
    assert usage.summary([], until=date(2026, 11, 30))[0].total_tokens == 10
    csv = to_csv(days, ["day", "model"])
    assert csv.splitlines()[0] == "day,model,requests,prompt_tokens,completion_tokens,total_tokens,errors,mean_latency_ms"
    assert csv.splitlines()[1].startswith("2026-11-30,a,1,3,7,10,0,")


def test_the_recorder_writes_off_the_request_path_and_loses_nothing_on_stop(db):
    user = Accounts(db).create("mia", PASSWORD)
    scope = user_scope(Accounts(db).update(user.id, limits=Limits(tpm=1_000_000)))

    async def run():
        recorder = UsageRecorder(db, flush_interval_s=30.0)  # longer than the test: only stop() can write them
        await recorder.start()
        for i in range(200):
            recorder.record(UsageEvent("api", "/v1/completions", "m", 200, 1.0, i, 1, user.id, charge=[scope], at=now))
        await asyncio.sleep(0.2)
        queued = await asyncio.to_thread(Usage(db).summary, [], user.id)
        await recorder.stop()
        return queued

    now = time.time()
    queued = asyncio.run(run())
    assert queued[0].requests == 0  # recorded without touching the database: queued for the writer
    total = Usage(db).summary([], user_id=user.id)[0]
    assert total.requests == 200 and total.prompt_tokens == sum(range(200))
    assert Counters(db).used(scope, now).tokens_this_minute == sum(range(200)) + 200


def test_a_users_own_usage_does_not_name_the_models_of_anonymous_battles(db):
    user = Accounts(db).create("otto", PASSWORD)
    usage = Usage(db)
    usage.write([UsageEvent("web", "arena-anonymous", "secret-model-a", 200, 5.0, 3, 4, user.id),
                 UsageEvent("web", "web", "plain-model", 200, 5.0, 1, 1, user.id)])
    own = {r.model: r.total_tokens for r in usage.summary(["model"], user.id, hide_battle_models=True)}
    assert own == {"(anonymous battle)": 7, "plain-model": 2}
    assert {r.model for r in usage.summary(["model"], user.id)} == {"secret-model-a", "plain-model"}  # an admin's view


def test_a_budget_beyond_32_bits_is_stored_and_counted(db):
    user = Accounts(db).create("pia", PASSWORD)
    made = ApiKeys(db).create(user, KeySpec(name="bulk", tpm=5_000_000_000, token_budget=10**12))
    grant = ApiKeys(db).grant(made.secret)
    assert (grant.key_limits.tpm, grant.key_limits.token_budget) == (5_000_000_000, 10**12)
    now = time.time()
    Usage(db).write([UsageEvent("api", "/v1/completions", "m", 200, 1.0, 1_000_000_000, 0, user.id,
                                charge=grant.scopes(), at=now) for _ in range(3)])
    Counters(db).admit(grant.scopes(), now)
    assert Counters(db).used(grant.scopes()[0], now).tokens_this_minute == 3_000_000_000
    with pytest.raises(ValueError):
        KeySpec(name="x", rpm=2**31)


def test_a_model_name_no_database_can_store_is_cleaned_and_a_refused_record_does_not_hold_up_the_rest(db):
    user = Accounts(db).create("quinn", PASSWORD)
    Usage(db).write([UsageEvent("api", "/v1/chat/completions", "x\ud800y\x00z", 404, 1.0, user_id=user.id)])
    assert [r.model for r in Usage(db).summary(["model"], user.id)] == ["x?yz"]

    async def run():
        recorder = UsageRecorder(db, flush_interval_s=0.05)
        await recorder.start()
        recorder.record(UsageEvent("api", "/v1/completions", "m", 200, 1.0, 1, 2, user_id=user.id))
        recorder.record(UsageEvent("api", "/v1/completions", "m", 200, 1.0, 1, 2, user_id=10**6))  # no such user
        recorder.record(UsageEvent("api", "/v1/completions", "m", 200, 1.0, 3, 4, user_id=user.id))
        await recorder.stop()
        return recorder.written

    assert asyncio.run(run()) == 2
    totals = Usage(db).summary(["model"], user.id)
    assert {r.model: (r.requests, r.total_tokens) for r in totals}["m"] == (2, 10)


def test_a_usage_csv_cell_a_spreadsheet_would_run_is_quoted(db):
    user = Accounts(db).create("rita", PASSWORD)
    Usage(db).write([UsageEvent("api", "/v1/chat/completions", "=HYPERLINK(\"http://x\")", 404, 1.0, user_id=user.id)])
    row = next(csv.DictReader(io.StringIO(to_csv(Usage(db).summary(["model"]), ["model"]))))
    assert row["model"] == "'=HYPERLINK(\"http://x\")"
