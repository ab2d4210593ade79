"""Users' API keys, their limits and usage, through the official openai SDK against real servers on 127.0.0.1
(controller, an echo worker, `parley api --auth` processes), on SQLite and on a real PostgreSQL: a user's key works
until it is revoked or its user disabled (then within seconds it does not), a key sees and uses only its models,
rate limits and budgets answer 429 as OpenAI does and hold exactly under concurrency and across two API processes,
and every request is recorded with the tokens its reply reported, none lost when the API stops. The bundled model
(llama.cpp) answers in the test of usage at shutdown; the echo engine elsewhere (inference is not the point)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import openai
import pytest
from sqlalchemy import select

from parley.store.accounts import Accounts
from parley.store.api_keys import ApiKeys, KeySpec
from parley.store.assistants import Assistants, AssistantSpec
from parley.store.database import Database
from parley.store.limits import Limits
from parley.store.models import UsageRecord
from tests.conftest import run_parley
from tests.servers import start_api, start_controller, start_worker

ECHO, OTHER = "echo", "echo-b"  # two models of one echo worker
SLOW = "echo-slow"  # an echo worker that takes 50 ms a token: a stream to leave in the middle
CHAT = "smollm2-135m-instruct"  # the bundled model
STATIC = "sk-team-static"
HI = [{"role": "user", "content": "hello there"}]
REVOKED_WITHIN_S = 5.0  # the API trusts a key's answer for 2 s


@pytest.fixture(scope="module")
def cluster():
    controller = start_controller()
    worker = start_worker(controller, names=f"{ECHO},{OTHER}", echo=True)
    slow = start_worker(controller, names=SLOW, echo=True, delay_s=0.05)
    yield controller
    slow.stop()
    worker.stop()
    controller.stop()


class Site:
    """Two `parley api --auth` processes on one database, and that database, for making users and keys."""

    def __init__(self, db: Database, api, second):
        self.db, self.api, self.second = db, api, second

    def user(self, **limits):
        user = Accounts(self.db).create(f"u{uuid.uuid4().hex[:10]}", None)
        if limits:
            user = Accounts(self.db).update(user.id, limits=Limits(**limits))
        return user

    def key(self, user=None, **spec) -> tuple[str, str]:
        """A new key of `user` (a new user when None): its secret and id."""
        made = ApiKeys(self.db).create(user or self.user(), KeySpec(name=spec.pop("name", "test"), **spec))
        return made.secret, made.key.id

    def client(self, key: str, second: bool = False) -> openai.OpenAI:
        return openai.OpenAI(base_url=(self.second if second else self.api).url + "/v1", api_key=key,
                             max_retries=0, timeout=60)

    def async_client(self, key: str, second: bool = False) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=(self.second if second else self.api).url + "/v1", api_key=key,
                                  max_retries=0, timeout=60)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request, cluster, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('keys') / 'parley.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"k_{uuid.uuid4().hex[:12]}")
    db = Database(url)
    db.upgrade()
    api = start_api(cluster, "--db-url", url, "--auth", env={"PARLEY_API_KEYS": STATIC})
    second = start_api(cluster, "--db-url", url, "--auth")
    yield Site(db, api, second)
    second.stop()
    api.stop()
    db.close()


def same_minute(seconds: float) -> None:
    """Rate limits count in calendar minutes: wait for the next one unless `seconds` are left in this one."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.2)


def chat(client: openai.OpenAI, model: str = ECHO, **kw):
    return client.chat.completions.create(model=model, messages=HI, max_tokens=kw.pop("max_tokens", 4), **kw)


def until_refused(call, error: type[openai.APIStatusError], within_s: float):
    """Call until it raises `error` (it works until then); the error and the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            call()
        except error as exc:
            return exc, time.monotonic() - started
        assert time.monotonic() - started < within_s, f"still served after {within_s} s"
        time.sleep(0.2)


def test_a_users_key_works_until_revoked(site):
    user = site.user()
    secret, key_id = site.key(user)
    client = site.client(secret)
    assert {ECHO, OTHER} <= {m.id for m in client.models.list()}
    assert chat(client).choices[0].message.content
    for wrong in ("sk-parley-" + "x" * 40, "nonsense"):
        with pytest.raises(openai.AuthenticationError) as refused:
            site.client(wrong).models.list()
        assert refused.value.body["code"] == "invalid_api_key"
    assert httpx.get(site.api.url + "/v1/models").status_code == 401  # no key at all

    ApiKeys(site.db).revoke(user, key_id)
    refused, took = until_refused(lambda: chat(client), openai.AuthenticationError, REVOKED_WITHIN_S)
    assert refused.body["code"] == "invalid_api_key" and took <= REVOKED_WITHIN_S
    with pytest.raises(openai.AuthenticationError):  # and on the other API process too
        site.client(secret, second=True).models.list()


def test_a_disabled_users_keys_stop_working(site):
    user = site.user()
    secret, _ = site.key(user)
    client = site.client(secret)
    chat(client)
    Accounts(site.db).update(user.id, status="disabled")
    refused, took = until_refused(lambda: chat(client), openai.AuthenticationError, REVOKED_WITHIN_S)
    assert refused.status_code == 401


def test_static_keys_work_alongside_users_keys(site):
    static = site.client(STATIC)
    assert chat(static).choices[0].message.content
    assert {ECHO, OTHER} <= {m.id for m in static.models.list()}
    secret, _ = site.key()
    assert chat(site.client(secret)).choices[0].message.content
    with pytest.raises(openai.AuthenticationError):  # the second API was given no static key
        site.client(STATIC, second=True).models.list()


def test_a_key_uses_and_sees_only_its_models_and_its_owners_assistants(site):
    owner, stranger = site.user(), site.user()
    assistants = Assistants(site.db)
    mine = assistants.create(owner, AssistantSpec(name="Mine", base_model=ECHO)).id
    shared = assistants.create(stranger, AssistantSpec(name="Shared", base_model=ECHO, shared=True)).id
    theirs = assistants.create(stranger, AssistantSpec(name="Theirs", base_model=ECHO)).id

    every = site.client(site.key(owner)[0])
    visible = {m.id for m in every.models.list()}
    assert {ECHO, OTHER, mine, shared} <= visible and theirs not in visible
    assert chat(every, mine).model == mine
    with pytest.raises(openai.NotFoundError):
        chat(every, theirs)

    only = site.client(site.key(owner, models=[ECHO, shared])[0])
    assert {m.id for m in only.models.list()} == {ECHO, shared}
    assert chat(only).choices[0].message.content and chat(only, shared).model == shared
    for model in (OTHER, mine):
        with pytest.raises(openai.NotFoundError) as refused:
            chat(only, model)
        assert refused.value.body["code"] == "model_not_found"
        assert refused.value.body["message"] == (f"The model '{model}' does not exist or you do not have access "
                                                 f"to it.")
        with pytest.raises(openai.NotFoundError):
            only.models.retrieve(model)
        with pytest.raises(openai.NotFoundError):
            only.completions.create(model=model, prompt="hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        only.embeddings.create(model=OTHER, input="hi")
    assert only.embeddings.create(model=ECHO, input="hi").data[0].embedding
    assert only.models.retrieve(ECHO).id == ECHO

    static = site.client(STATIC)  # a static key is nobody's: the shared assistants only
    visible = {m.id for m in static.models.list()}
    assert shared in visible and mine not in visible and theirs not in visible


def test_over_the_requests_per_minute_of_a_key_or_its_user(site):
    same_minute(15)
    client = site.client(site.key(rpm=3, name="three a minute")[0])
    for _ in range(3):
        chat(client)
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client)
    error = refused.value
    assert error.status_code == 429
    assert error.body["code"] == "rate_limit_exceeded" and error.body["type"] == "requests"
    assert "three a minute" in error.body["message"] and "3 requests per minute" in error.body["message"]
    assert 1 <= int(error.response.headers["retry-after"]) <= 61
    with pytest.raises(openai.RateLimitError):  # embeddings count too
        client.embeddings.create(model=ECHO, input="hi")
    assert site.client(site.key()[0]).models.list()  # another key is not limited by it

    user = site.user(rpm=4)  # a user's limit holds for all their keys together
    first, second = site.client(site.key(user)[0]), site.client(site.key(user)[0], second=True)
    for client in (first, second, first, second):
        chat(client)
    for client in (first, second):
        with pytest.raises(openai.RateLimitError) as refused:
            chat(client)
        assert f"the user '{user.username}'" in refused.value.body["message"]


def test_over_the_tokens_per_minute(site):
    same_minute(15)
    client = site.client(site.key(tpm=10)[0])
    used = chat(client, max_tokens=8).usage.total_tokens
    assert used > 10
    refused, _ = until_refused(lambda: chat(client), openai.RateLimitError, 5)  # once the usage is written
    assert refused.body["code"] == "rate_limit_exceeded" and refused.body["type"] == "tokens"
    assert "10 tokens per minute" in refused.body["message"] and int(refused.response.headers["retry-after"]) >= 1


def test_over_budget(site):
    client = site.client(site.key(token_budget=20, budget_period="day")[0])
    chat(client, max_tokens=16)
    refused, _ = until_refused(lambda: chat(client), openai.RateLimitError, 5)
    assert refused.body["code"] == "insufficient_quota" and refused.body["type"] == "insufficient_quota"
    assert "20 tokens per day" in refused.body["message"]
    assert int(refused.response.headers["retry-after"]) >= 1


async def _outcomes(calls) -> list[int]:
    async def status(call) -> int:
        try:
            await call()
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    return await asyncio.gather(*(status(c) for c in calls))


def test_50_at_once_against_10_a_minute_admit_exactly_10(site):
    same_minute(20)
    client = site.async_client(site.key(rpm=10)[0])
    statuses = asyncio.run(_outcomes([lambda: client.chat.completions.create(model=ECHO, messages=HI, max_tokens=2)
                                      for _ in range(50)]))
    assert statuses.count(200) == 10 and statuses.count(429) == 40, statuses


def test_two_api_processes_share_one_limit(site):
    same_minute(20)
    secret, _ = site.key(rpm=10)
    clients = [site.async_client(secret), site.async_client(secret, second=True)]
    statuses = asyncio.run(_outcomes([
        lambda c=clients[i % 2]: c.chat.completions.create(model=ECHO, messages=HI, max_tokens=2) for i in range(20)]))
    assert statuses.count(200) == 10 and statuses.count(429) == 10, statuses


def rows_of(db: Database, key_id: str | None = None, count: int = 0, within_s: float = 10) -> list[UsageRecord]:
    """The usage rows (of a key), once there are `count` of them."""
    deadline = time.monotonic() + within_s
    while True:
        with db.session() as s:
            query = select(UsageRecord).order_by(UsageRecord.id)
            rows = list(s.scalars(query.where(UsageRecord.key_id == key_id) if key_id else query))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_usage_records_every_request_with_the_tokens_its_reply_reported(site):
    user = site.user()
    secret, key_id = site.key(user, models=[ECHO])
    client = site.client(secret)
    reported = []  # (endpoint, model, prompt, completion) as the replies said
    whole = chat(client, max_tokens=5)
    reported.append(("/v1/chat/completions", ECHO, whole.usage.prompt_tokens, whole.usage.completion_tokens))
    long = [{"role": "user", "content": "one two three four five six seven eight"}]
    told = list(client.chat.completions.create(model=ECHO, messages=long, max_tokens=6, stream=True,
                                               stream_options={"include_usage": True}))[-1].usage
    reported.append(("/v1/chat/completions", ECHO, told.prompt_tokens, told.completion_tokens))
    # the same stream without include_usage: the client is told nothing, the usage is the same
    assert all(e.usage is None for e in client.chat.completions.create(model=ECHO, messages=long, max_tokens=6,
                                                                       stream=True))
    reported.append(("/v1/chat/completions", ECHO, told.prompt_tokens, told.completion_tokens))
    completion = client.completions.create(model=ECHO, prompt=["a b c", "d e f g"], max_tokens=3)
    reported.append(("/v1/completions", ECHO, completion.usage.prompt_tokens, completion.usage.completion_tokens))
    embedded = client.embeddings.create(model=ECHO, input=["x y z", "w"])
    reported.append(("/v1/embeddings", ECHO, embedded.usage.prompt_tokens, 0))
    with pytest.raises(openai.NotFoundError):
        chat(client, OTHER)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=ECHO, messages=HI, max_tokens=2, tool_choice="required")

    rows = rows_of(site.db, key_id, count=len(reported) + 2)
    assert [(r.endpoint, r.model, r.prompt_tokens, r.completion_tokens) for r in rows if r.status == 200] == reported
    assert [(r.model, r.status) for r in rows if r.status != 200] == [(OTHER, 404), (ECHO, 400)]
    assert all(r.user_id == user.id and r.source == "api" and r.latency_ms > 0 for r in rows)
    assert sum(r.prompt_tokens + r.completion_tokens for r in rows) == sum(p + c for _, _, p, c in reported)
    # /metrics counts tokens by model (not by user or key)
    counted = [line for line in httpx.get(site.api.url + "/metrics").text.splitlines()
               if line.startswith(("parley_prompt_tokens_total{", "parley_generation_tokens_total{"))]
    assert any('model="echo"' in line for line in counted) and not any("user" in line or "key" in line
                                                                       for line in counted), counted


def test_a_stream_left_in_the_middle_is_charged_the_tokens_it_streamed(site):
    secret, key_id = site.key(tpm=1_000_000)
    words = " ".join(f"w{i}" for i in range(300))
    with httpx.stream("POST", site.api.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {secret}"},
                      json={"model": SLOW, "messages": [{"role": "user", "content": words}], "max_tokens": 400,
                            "stream": True}) as response:
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(12)) if line.startswith("data: ")]
    assert len(received) >= 5  # left after a few tokens, long before the 400
    [row] = rows_of(site.db, key_id, count=1)
    assert row.status == 499 and 5 <= row.completion_tokens < 400, (row.status, row.completion_tokens)


def test_the_api_refuses_auth_without_any_source_of_keys():
    result = run_parley("api", "--auth", "--no-assistants", env={"PARLEY_API_KEYS": ""})
    assert result.returncode != 0 and "--auth with --no-assistants accepts no key" in result.stderr


def test_keys_answer_503_when_the_database_is_unreachable():
    from parley.serving.api_errors import APIError
    from parley.serving.key_auth import KeyAuth

    keys = KeyAuth([], Database("postgresql://parley@127.0.0.1:9/nowhere"), required=True)
    with pytest.raises(APIError) as refused:
        asyncio.run(keys.check("Bearer sk-parley-" + "x" * 40))
    assert refused.value.status == 503 and "database is unreachable" in refused.value.message


def test_no_usage_is_lost_when_the_api_stops(cluster, tmp_path):
    """The bundled model's replies, through an API without keys (the local user's requests), stopped with
    Ctrl-C at once: every row is in the database, with the tokens the replies reported."""
    worker = start_worker(cluster, names=CHAT)
    url = f"sqlite:///{tmp_path / 'parley.db'}"
    db = Database(url)
    db.upgrade()
    api = start_api(cluster, "--db-url", url)
    try:
        client = openai.OpenAI(base_url=api.url + "/v1", api_key="none", max_retries=0, timeout=120)
        question = [{"role": "user", "content": "Name three colours."}]
        reported = []
        for _ in range(2):
            r = client.chat.completions.create(model=CHAT, messages=question, max_tokens=8, temperature=0)
            reported.append((r.usage.prompt_tokens, r.usage.completion_tokens))
        prompt_tokens = reported[0][0]
        events = list(client.chat.completions.create(model=CHAT, messages=question, max_tokens=8, stream=True,
                                                     extra_body={"ignore_eos": True}))
        assert events and all(e.usage is None for e in events)
        reported.append((prompt_tokens, 8))  # the same prompt, and all 8 tokens (EOS ignored)
        done = client.completions.create(model=CHAT, prompt="The sky is", max_tokens=6)
        reported.append((done.usage.prompt_tokens, done.usage.completion_tokens))
        assert api.stop() == 0  # at once: the writer has not flushed yet
    finally:
        api.stop()
        worker.stop()
    rows = rows_of(db, count=len(reported), within_s=0)
    local = Accounts(db).local_user()
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == reported
    assert all(r.user_id == local.id and r.key_id is None and r.status == 200 and r.model == CHAT for r in rows)
    assert "usage writer stopped (4 records stored)" in api.log()
    db.close()
