"""Assistants behind the OpenAI API and on the command line, with real servers on 127.0.0.1: the bundled chat
model (llama.cpp, greedy) answers from an uploaded document as an assistant with knowledge, and not without it;
an echo worker shows exactly what an assistant sends its base model (system prompt, defaults)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from parley.store.database import Database
from tests.conftest import run_parley
from tests.knowledge_files import pdf_bytes
from tests.servers import start_api, start_controller, start_worker

CHAT = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
QUESTION = "What is the phosphorus discharge limit for the Kestrel Lake treatment works?"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("assistants")
    db_url = f"sqlite:///{tmp / 'parley.db'}"
    Database(db_url).upgrade()
    controller = start_controller()
    servers = [controller]
    try:
        servers.append(start_worker(controller, names=CHAT))
        servers.append(start_worker(controller, "--engine", "sentence-transformers", "--model-path", MINILM,
                                    names=MINILM))
        servers.append(start_worker(controller, names="echo", echo=True))
        api = start_api(controller, "--db-url", db_url)
        servers.append(api)
        keyed = start_api(controller, "--db-url", db_url, "--api-keys", "sk-team")
        servers.append(keyed)
        pdf = tmp / "kestrel.pdf"
        pdf.write_bytes(pdf_bytes())
        yield {"db_url": db_url, "controller": controller, "api": api, "keyed": keyed, "pdf": pdf}
    finally:
        for server in reversed(servers):
            server.stop()


def parley(stack, *args: str) -> str:
    result = run_parley(*args, "--db-url", stack["db_url"])
    assert result.returncode == 0, result.stderr
    return result.stdout


def created_id(output: str) -> str:
    return output.split()[0]


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["api"].url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_an_assistant_answers_from_its_document_and_cites_it(stack, client):
    controller = ["--controller-address", stack["controller"].url]
    parley(stack, "knowledge", "create", "Kestrel reports")
    added = run_parley("knowledge", "add", "Kestrel reports", str(stack["pdf"]), *controller, "--db-url",
                       stack["db_url"])
    assert added.returncode == 0, added.stderr
    assert "kestrel.pdf: 3 chunks, 3 pages" in added.stdout.replace("\n", " ")
    expert = created_id(parley(stack, "assistant", "create", "--name", "EIA expert", "--base-model", CHAT,
                               "--system-prompt", "You are an environmental impact assessment expert.",
                               "--knowledge", "Kestrel reports", "--starter", "What limits apply?",
                               "--temperature", "0"))
    plain = created_id(parley(stack, "assistant", "create", "--name", "EIA expert, no documents", "--base-model",
                              CHAT, "--system-prompt", "You are an environmental impact assessment expert.",
                              "--temperature", "0"))
    listed = {m.id: m for m in client.models.list()}
    assert {CHAT, MINILM, "echo", expert, plain} <= set(listed)
    assert listed[expert].model_extra["name"] == "EIA expert" and listed[expert].model_extra["base_model"] == CHAT
    assert "name" not in listed[CHAT].model_extra  # a plain model's card is OpenAI's shape

    reply = client.chat.completions.create(model=expert, messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=40)
    answer = reply.choices[0].message.content
    assert "0.4 milligrams" in answer, answer
    assert reply.model == expert
    sources = reply.model_extra["sources"]
    assert sources[0]["filename"] == "kestrel.pdf" and sources[0]["page"] == 3 and sources[0]["n"] == 1
    # the same model and role without the document does not know it
    unaided = client.chat.completions.create(model=plain, messages=[{"role": "user", "content": QUESTION}],
                                             max_tokens=40)
    guess = unaided.choices[0].message.content
    assert "0.4 milligrams" not in guess and "sources" not in unaided.model_extra, guess
    # streamed: the first event says what the reply may cite
    events = list(client.chat.completions.create(model=expert, messages=[{"role": "user", "content": QUESTION}],
                                                 max_tokens=40, stream=True))
    assert events[0].model_extra["sources"][0]["page"] == 3
    assert all("sources" not in e.model_extra for e in events[1:])
    assert "0.4 milligrams" in "".join(e.choices[0].delta.content or "" for e in events if e.choices)


def test_an_assistant_sends_its_role_and_defaults_and_the_request_wins(stack, client):
    soil = created_id(parley(stack, "assistant", "create", "--name", "Soil engineer", "--base-model", "echo",
                             "--system-prompt", "You are a soil and water engineer.", "--max-tokens", "3"))
    short = client.chat.completions.create(model=soil, messages=[{"role": "user", "content": "drainage please"}])
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    whole = client.chat.completions.create(model=soil, max_tokens=400, messages=[
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "drainage please"}])
    echoed = whole.choices[0].message.content  # the echo engine repeats the prompt it was given, up to a turn's end
    assert echoed.startswith("You are a soil and water engineer.\n\nAnswer briefly."), echoed
    assert whole.usage.completion_tokens > 3


def test_who_may_use_an_assistant(stack, client):
    private = created_id(parley(stack, "assistant", "create", "--name", "Private air", "--base-model", "echo"))
    shared = created_id(parley(stack, "assistant", "create", "--name", "Shared air", "--base-model", "echo",
                               "--shared"))
    team = openai.OpenAI(base_url=stack["keyed"].url + "/v1", api_key="sk-team", max_retries=0)
    visible = {m.id for m in team.models.list()}
    assert shared in visible and private not in visible  # keys belong to no user yet: shared assistants only
    with pytest.raises(openai.NotFoundError) as refused:
        team.chat.completions.create(model=private, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="asst_doesnotexist", messages=[{"role": "user", "content": "hi"}])
    assert team.chat.completions.create(model=shared, messages=[{"role": "user", "content": "hi"}]).model == shared


@pytest.mark.slow  # 15-50 s each: kept out of `make test` for its time budget; `make test-slow` (CI) runs it
def test_assistants_export_and_import_as_json(stack, tmp_path):
    parley(stack, "knowledge", "create", "Air notes")
    parley(stack, "assistant", "create", "--name", "Air modeller", "--base-model", "echo", "--knowledge",
           "Air notes", "--starter", "Which dispersion model?", "--top-k", "3")
    exported = json.loads(parley(stack, "assistant", "export", "Air modeller"))
    assert exported["collections"] == ["Air notes"] and exported["starters"] == ["Which dispersion model?"]
    path = tmp_path / "air.json"
    exported["system_prompt"] = "You are an air-quality modelling expert."
    path.write_text(json.dumps(exported))
    refused = run_parley("assistant", "import", str(path), "--db-url", stack["db_url"])
    assert refused.returncode != 0 and "already" in refused.stderr and "--replace" in refused.stderr
    parley(stack, "assistant", "import", str(path), "--replace")
    shown = json.loads(parley(stack, "assistant", "show", "Air modeller"))
    assert shown["system_prompt"] == "You are an air-quality modelling expert." and shown["top_k"] == 3
    for broken, says in ((dict(exported, collections=["Nowhere"]), "no collection 'Nowhere'"),
                         (dict(exported, temperature=9), "temperature"),
                         (dict(exported, colour="red"), "colour")):
        path.write_text(json.dumps(broken))
        result = run_parley("assistant", "import", str(path), "--db-url", stack["db_url"])
        assert result.returncode != 0 and says in result.stderr, result.stderr
    path.write_text("{not json")
    result = run_parley("assistant", "import", str(path), "--db-url", stack["db_url"])
    assert result.returncode != 0 and str(path) in result.stderr


def test_knowledge_commands_refuse_clearly(stack):
    controller = ["--controller-address", stack["controller"].url, "--db-url", stack["db_url"]]
    result = run_parley("knowledge", "add", "No such collection", str(stack["pdf"]), *controller)
    assert result.returncode != 0 and "no collection 'No such collection'" in result.stderr
    parley(stack, "knowledge", "create", "Mixed")
    bad = stack["pdf"].with_name("slides.pptx")
    bad.write_bytes(b"x")
    result = run_parley("knowledge", "add", "Mixed", str(bad), *controller)
    assert result.returncode != 0 and "not a supported document type" in result.stderr
    down = run_parley("knowledge", "add", "Mixed", str(stack["pdf"]), "--controller-address", "http://127.0.0.1:9",
                      "--db-url", stack["db_url"])
    unreachable = f"{stack['pdf']}: the controller at http://127.0.0.1:9 is unreachable"
    assert down.returncode != 0 and unreachable in down.stderr
    listed = run_parley("knowledge", "documents", "Mixed", "--db-url", stack["db_url"])
    assert listed.returncode == 0 and listed.stdout == ""  # the failed adds left nothing behind
    parley(stack, "knowledge", "add", "Mixed", str(stack["pdf"]), "--controller-address", stack["controller"].url)
    found = run_parley("knowledge", "search", "Mixed", "Heron Cottage noise", *controller)
    assert found.returncode == 0 and "page 2" in found.stdout.split("\n\n")[0], found.stdout
    assert httpx.get(stack["api"].url + "/health").json()["status"] == "ok"
