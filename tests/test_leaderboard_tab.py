"""The leaderboard tab at the level of its handlers (no browser): a torn or missing leaderboard file, its atomic
writes, who may recompute it and how often, and the `--leaderboard-interval` schedule (once per process)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from starlette.routing import Mount

from parley.store.database import Database
from parley.web import leaderboard_tab
from parley.web.app import build_blocks, create_app
from parley.web.model_client import ModelClient
from parley.web.model_descriptions import ModelDescriptions
from parley.web.services import WebServices, WebSettings
from tests.servers import free_port

LOCAL = SimpleNamespace(username=None)  # a gr.Request as the handlers see it without --auth


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


def handlers(blocks: gr.Blocks, event: str, elem_id: str | None = None) -> list:
    """The functions wired to `event` (of the component with `elem_id`, or of any component / the page)."""
    ids = {i for i, b in blocks.blocks.items() if elem_id is None or getattr(b, "elem_id", None) == elem_id}
    if elem_id is None:
        ids.add(blocks._id)
    return [f.fn for f in blocks.fns.values() if any(t[0] in ids and t[1] == event for t in f.targets)]


async def call(fn, *args):
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


def text(outputs) -> str:
    return " ".join(str(o) for o in outputs)


def recompute_button(services: WebServices):
    with gr.Blocks() as blocks:
        leaderboard_tab.build(services)
    [click] = handlers(blocks, "click", "leaderboard-recompute")
    return click


async def test_a_torn_or_missing_leaderboard_file_does_not_break_the_page(make_services, caplog):
    services = make_services()
    [load] = handlers(build_blocks(services), "load")
    assert "No Arena ratings yet" in text(await load(LOCAL))
    path = services.settings.leaderboard_file
    path.parent.mkdir(parents=True)
    for torn in ('{"generated": 1700000000.0, "method": "bradley-te', "[1, 2]", ""):  # cut short, not a board, empty
        path.write_text(torn)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            shown = text(await load(LOCAL))
        assert "leaderboard file is unreadable" in shown and "press Recompute" in shown
        assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_leaderboard_file_is_replaced_whole_never_written_in_place(make_services, monkeypatch):
    services = make_services()
    vote(services)
    assert leaderboard_tab.recompute(services).startswith("Recomputed from 6 battles")
    path = services.settings.leaderboard_file
    before = {p.name: p.read_text() for p in path.parent.iterdir()}
    vote(services, n=3)

    class Killed(BaseException):
        """The process dies after writing the new file, before it takes the old one's place."""

    def killed(src, dst):
        raise Killed(f"{src} -> {dst}")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Killed):
        leaderboard_tab.recompute(services)
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in path.parent.iterdir()} == before  # the old files, whole; no temp file left
    assert leaderboard_tab.recompute(services).startswith("Recomputed from 9 battles")
    assert '"battles": 9' in path.read_text()


def test_recompute_writes_the_leaderboard_file_the_tab_reads_whatever_its_name(make_services, tmp_path):
    services = make_services(leaderboard_file=tmp_path / "boards" / "arena.json")
    vote(services)
    leaderboard_tab.recompute(services)
    rows, line = leaderboard_tab.table(services)
    assert [r[1] for r in rows] == ["strong", "weak"] and line.startswith("bradley-terry, 6 battles")


async def test_only_admins_may_recompute_the_leaderboard(make_services):
    services = make_services(auth=True)
    alice = services.accounts.create("alice", "a long enough password", is_admin=True)
    services.accounts.create("bob", "another long password")
    vote(services, alice.id)
    click = recompute_button(services)
    refused = text(await call(click, SimpleNamespace(username="bob")))
    assert "Only admins can recompute" in refused and not services.settings.leaderboard_file.exists()
    assert "Recomputed from 6 battles" in text(await call(click, SimpleNamespace(username="alice")))
    assert services.settings.leaderboard_file.is_file()


async def test_recompute_from_the_ui_runs_at_most_once_in_30_seconds(make_services, monkeypatch):
    services = make_services()
    vote(services)
    runs: list[int] = []
    real = leaderboard_tab.recompute

    def counted(s: WebServices) -> str:
        runs.append(threading.get_ident())
        return real(s)

    monkeypatch.setattr(leaderboard_tab, "recompute", counted)
    click = recompute_button(services)
    first = text(await call(click, LOCAL))
    second = text(await call(click, LOCAL))
    assert "Recomputed from 6 battles" in first and len(runs) == 1
    assert "recomputed 0 s ago" in second and "can be recomputed again in 30 s" in second
    assert "bradley-terry, 6 battles" in second  # the table is still shown
    assert runs[0] != threading.get_ident()  # the work ran in a worker thread, not on the event loop


def test_the_recompute_gate_opens_again_after_its_interval():
    now = [100.0]
    gate = leaderboard_tab.RecomputeGate(every_s=30.0, clock=lambda: now[0])
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

    monkeypatch.setattr(leaderboard_tab, "recompute", counted)
    app = create_app(settings_for(tmp_path, leaderboard_interval_s=0.3))
    blocks = next(r.app for r in app.routes if isinstance(r, Mount) and hasattr(r.app, "get_blocks")).get_blocks()
    [load] = handlers(blocks, "load")
    for _ in range(5):  # five browser tabs open the page; their timers tick
        await load(LOCAL)
        for tick in handlers(blocks, "tick"):
            await call(tick, *[LOCAL][:len(inspect.signature(tick).parameters)])
    assert runs == []  # pages and their timers only read the file
    async with app.router.lifespan_context(app):
        for _ in range(3):
            await load(LOCAL)
        await asyncio.sleep(1.65)
    started = len(runs)
    await asyncio.sleep(0.5)
    assert len(runs) == started  # the schedule stopped with the app
    assert 2 <= started <= 6, runs  # one schedule: every 0.3 s for 1.65 s, not one per page
    assert all(b - a >= 0.2 for (a, _), (b, _) in zip(runs, runs[1:]))
    assert threading.get_ident() not in {thread for _, thread in runs}  # never on the event loop
