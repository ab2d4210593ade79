"""The leaderboard behind the web app: the ratings file read, written whole and recomputed from the stored votes
(by admins, at most once in 30 s; on a schedule, once per process however many pages are open), and what a torn
file shows. In-process: the JSON API through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from parley.store.database import Database
from parley.web import leaderboard
from parley.web.app import create_app
from parley.web.model_client import ModelClient
from parley.web.model_descriptions import ModelDescriptions
from parley.web.services import WebServices, WebSettings
from tests.servers import free_port


def settings_for(tmp_path: Path, **changes) -> WebSettings:
    values = {"db_url": f"sqlite:///{tmp_path / 'parley.db'}",
              "controller_address": f"http://127.0.0.1:{free_port()}",  # none there: no models listed
              "leaderboard_file": tmp_path / "ratings" / "leaderboard.json",
              "mt_bench_judgments": tmp_path / "no_judgments.jsonl", "bootstrap_rounds": 20}
    return WebSettings(**{**values, **changes})


@pytest.fixture
def make_services(tmp_path):
    made: list[WebServices] = []

    def make(**changes) -> WebServices:
        settings = settings_for(tmp_path, **changes)
        db = Database(settings.db_url)
        db.upgrade()
        made.append(WebServices(settings=settings, db=db, client=ModelClient(settings.controller_address),
                                model_info=ModelDescriptions(), moderator=None))
        return made[-1]

    yield make
    for services in made:
        services.db.close()


def vote(services: WebServices, user_id: int | None = None, n: int = 6) -> None:
    """n anonymous battles between "strong" and "weak", strong winning two in three."""
    me = user_id if user_id is not None else services.accounts.local_user().id
    for i in range(n):
        a = services.conversations.create(me, "strong", mode="battle")
        b = services.conversations.create(me, "weak", mode="battle")
        services.votes.record(me, "model_b" if i % 3 == 2 else "model_a", "strong", "weak", True, a.id, b.id)


async def client_for(app) -> httpx.AsyncClient:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://web/api")
    client.headers["X-CSRF-Token"] = (await client.get("/session")).json()["csrf_token"]
    return client


async def test_a_torn_or_missing_leaderboard_file_does_not_break_the_page(tmp_path, caplog):
    settings = settings_for(tmp_path)
    client = await client_for(create_app(settings))
    assert (await client.get("/leaderboard")).json()["status"].startswith("No Arena ratings yet")
    path = settings.leaderboard_file
    path.parent.mkdir(parents=True)
    for torn in ('{"generated": 1700000000.0, "method": "bradley-te', "[1, 2]", ""):  # cut short, not a board, empty
        path.write_text(torn)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            shown = (await client.get("/leaderboard")).json()
        assert "leaderboard file is unreadable" in shown["status"] and "press Recompute" in shown["status"]
        assert shown["rows"] == []
        assert any("unreadable" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_leaderboard_file_is_replaced_whole_never_written_in_place(make_services, monkeypatch):
    services = make_services()
    vote(services)
    assert leaderboard.recompute(services).startswith("Recomputed from 6 battles")
    path = services.settings.leaderboard_file
    before = {p.name: p.read_text() for p in path.parent.iterdir()}
    vote(services, n=3)

    class Killed(BaseException):
        """The process dies after writing the new file, before it takes the old one's place."""

    def killed(src, dst):
        raise Killed(f"{src} -> {dst}")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Killed):
        leaderboard.recompute(services)
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in path.parent.iterdir()} == before  # the old files, whole; no temp file left
    assert leaderboard.recompute(services).startswith("Recomputed from 9 battles")
    assert '"battles": 9' in path.read_text()


async def test_recompute_writes_the_file_the_page_reads_whatever_its_name(tmp_path):
    settings = settings_for(tmp_path, leaderboard_file=tmp_path / "boards" / "arena.json")
    app = create_app(settings)
    vote(app.state.services)
    client = await client_for(app)
    board = (await client.post("/leaderboard/recompute")).json()  # the local user is an admin
    assert [r["model"] for r in board["rows"]] == ["strong", "weak"]
    assert board["status"].startswith("Recomputed from 6 battles. bradley-terry, 6 battles")
    assert (tmp_path / "boards" / "arena.json").is_file()


async def test_only_admins_may_recompute_and_at_most_once_in_30_seconds(tmp_path, monkeypatch):
    app = create_app(settings_for(tmp_path, auth=True))
    services = app.state.services
    alice = services.accounts.create("alice", "a long enough password", is_admin=True)
    services.accounts.create("bob", "another long password")
    vote(services, alice.id)
    runs: list[int] = []
    real = leaderboard.recompute

    def counted(s: WebServices) -> str:
        runs.append(threading.get_ident())
        return real(s)

    monkeypatch.setattr("parley.web.leaderboard_api.recompute", counted)
    bob, alice_client = await client_for(app), await client_for(app)
    for client, name, password in ((bob, "bob", "another long password"), (alice_client, "alice", "a long enough password")):
        r = await client.post("/login", json={"username": name, "password": password})
        client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    refused = await bob.post("/leaderboard/recompute")
    assert refused.status_code == 403 and "Only admins can recompute" in refused.json()["error"]["message"]
    assert not services.settings.leaderboard_file.exists() and (await bob.get("/leaderboard")).json()["vote_stats"] is None
    first = await alice_client.post("/leaderboard/recompute")
    assert first.json()["status"].startswith("Recomputed from 6 battles") and len(runs) == 1
    second = await alice_client.post("/leaderboard/recompute")
    assert second.status_code == 429 and "can be recomputed again in 30 s" in second.json()["error"]["message"]
    assert len(runs) == 1 and runs[0] != threading.get_ident()  # the work ran in a worker thread


def test_the_recompute_gate_opens_again_after_its_interval():
    now = [100.0]
    gate = leaderboard.RecomputeGate(every_s=30.0, clock=lambda: now[0])
    admin, user = SimpleNamespace(is_admin=True), SimpleNamespace(is_admin=False)
    assert gate.refusal(user) == "Only admins can recompute the leaderboard."
    assert gate.refusal(admin) is None
    now[0] += 12.25
    assert gate.refusal(admin) == "The leaderboard was recomputed 12 s ago; it can be recomputed again in 18 s."
    now[0] += 17.75
    assert gate.refusal(admin) is None


async def test_the_interval_recompute_runs_once_per_process_however_many_pages_load(tmp_path, monkeypatch):
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / "data"))
    runs: list[tuple[float, int]] = []

    def counted(_services: WebServices) -> str:
        runs.append((time.monotonic(), threading.get_ident()))
        return "Recomputed from 0 battles."

    monkeypatch.setattr(leaderboard, "recompute", counted)
    app = create_app(settings_for(tmp_path, leaderboard_interval_s=0.3))
    client = await client_for(app)
    for _ in range(5):  # five open pages read the leaderboard
        await client.get("/leaderboard")
    assert runs == []  # pages only read the file
    async with app.router.lifespan_context(app):
        for _ in range(3):
            await client.get("/leaderboard")
        await asyncio.sleep(1.65)
    started = len(runs)
    await asyncio.sleep(0.5)
    assert len(runs) == started  # the schedule stopped with the app
    assert 2 <= started <= 6, runs  # one schedule: every 0.3 s for 1.65 s, not one per page
    assert all(b - a >= 0.2 for (a, _), (b, _) in zip(runs, runs[1:]))
    assert threading.get_ident() not in {thread for _, thread in runs}  # never on the event loop
