"""`parley knowledge` and `parley assistant`: knowledge collections and assistants, in the store the web UI uses.

They act for one user (`--user NAME`; default: the local user of a web UI without --auth). Documents and
queries are embedded by the collection's embedding model, served by the cluster (`parley serve` serves the
bundled all-MiniLM-L6-v2), so `--controller-address` must reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from parley.cli.secret_args import (
    add_cluster_secret_argument,
    add_db_url_arguments,
    cluster_secret,
    db_url,
)
from parley.errors import ParleyError


def _common(p: argparse.ArgumentParser, cluster: bool = False) -> None:
    add_db_url_arguments(p)
    p.add_argument("--user", default=None, help="act as this user (default: the local user)")
    if cluster:
        p.add_argument("--controller-address", default="http://127.0.0.1:21001")
        add_cluster_secret_argument(p)


def add_parser(sub) -> None:
    k = sub.add_parser("knowledge", help="knowledge collections: create, add documents, search, re-index",
                       description=__doc__)
    steps = k.add_subparsers(dest="knowledge_step", required=True, metavar="STEP")
    p = steps.add_parser("create", help="a new collection")
    p.add_argument("name")
    p.add_argument("--description", default="")
    p.add_argument("--shared", action="store_true", help="visible to every user (default: yours alone)")
    p.add_argument("--embedding-model", default="all-minilm-l6-v2", help="the served model that embeds it")
    _common(p)
    p.set_defaults(run=run_create)
    p = steps.add_parser("list", help="the collections you can see")
    _common(p)
    p.set_defaults(run=run_list)
    p = steps.add_parser("add", help="add documents (PDF, DOCX, HTML, Markdown, text) to a collection")
    p.add_argument("collection", help="its id or name")
    p.add_argument("files", nargs="+", type=Path)
    _common(p, cluster=True)
    p.set_defaults(run=run_add)
    p = steps.add_parser("documents", help="a collection's documents")
    p.add_argument("collection")
    _common(p)
    p.set_defaults(run=run_documents)
    p = steps.add_parser("remove", help="remove a document (its chunks and vectors go with it)")
    p.add_argument("collection")
    p.add_argument("document_id", type=int)
    _common(p)
    p.set_defaults(run=run_remove)
    p = steps.add_parser("search", help="the chunks that best answer a question")
    p.add_argument("collection")
    p.add_argument("query")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--min-score", type=float, default=None, help="least cosine similarity (default: none)")
    p.add_argument("--mode", choices=["hybrid", "vector", "keyword"], default="hybrid")
    _common(p, cluster=True)
    p.set_defaults(run=run_search)
    p = steps.add_parser("reindex", help="embed every chunk again with another embedding model")
    p.add_argument("collection")
    p.add_argument("--embedding-model", required=True)
    _common(p, cluster=True)
    p.set_defaults(run=run_reindex)
    p = steps.add_parser("delete", help="delete a collection and all its documents")
    p.add_argument("collection")
    _common(p)
    p.set_defaults(run=run_delete)

    a = sub.add_parser("assistant", help="assistants: a base model with a role, defaults and knowledge",
                       description=__doc__)
    steps = a.add_subparsers(dest="assistant_step", required=True, metavar="STEP")
    p = steps.add_parser("create", help="a new assistant")
    p.add_argument("--name", required=True)
    p.add_argument("--base-model", required=True, help="a model the controller lists")
    p.add_argument("--description", default="")
    p.add_argument("--system-prompt", default="", help='e.g. "You are an environmental impact assessment expert."')
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--starter", action="append", default=[], help="a starter prompt (repeat for several)")
    p.add_argument("--knowledge", action="append", default=[], help="a collection's id or name (repeat)")
    p.add_argument("--top-k", type=int, default=5, help="chunks retrieved per question (default 5)")
    p.add_argument("--min-score", type=float, default=0.25, help="the relevance floor, a cosine similarity")
    p.add_argument("--shared", action="store_true", help="visible to every user")
    p.add_argument("--in-battles", action="store_true", help="drawn for anonymous Arena battles (needs --shared)")
    _common(p)
    p.set_defaults(run=run_assistant_create)
    p = steps.add_parser("list", help="the assistants you can use")
    _common(p)
    p.set_defaults(run=run_assistant_list)
    for name, helptext, run in (("show", "one assistant, as JSON", run_assistant_show),
                                ("delete", "delete an assistant", run_assistant_delete)):
        p = steps.add_parser(name, help=helptext)
        p.add_argument("assistant", help="its id or name")
        _common(p)
        p.set_defaults(run=run)
    p = steps.add_parser("export", help="an assistant as JSON (its collections by name), to keep in git")
    p.add_argument("assistant")
    p.add_argument("-o", "--output", type=Path, default=None, help="default: standard output")
    _common(p)
    p.set_defaults(run=run_assistant_export)
    p = steps.add_parser("import", help="create assistants from JSON files that `export` wrote")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--replace", action="store_true", help="update your assistant of the same name instead of "
                                                          "refusing")
    _common(p)
    p.set_defaults(run=run_assistant_import)


# -- shared pieces ------------------------------------------------------------------------------------


def _store(args):
    from parley.store.accounts import Accounts
    from parley.store.database import Database

    db = Database(db_url(args))
    db.upgrade()
    accounts = Accounts(db)
    user = accounts.local_user() if args.user is None else accounts.get(args.user)
    if user is None:
        raise ParleyError(f"no such user: {args.user} (see `parley db create-user`)")
    return db, user


def _knowledge(args):
    """The knowledge store, the user acted for, and the collection `args.collection` names (if it names one)."""
    from parley.store.knowledge import Knowledge

    db, user = _store(args)
    knowledge = Knowledge(db)
    collection = _collection(knowledge, user, args.collection) if getattr(args, "collection", None) else None
    return knowledge, user, collection


def _collection(knowledge, user, id_or_name: str):
    from parley.store.conversations import NotFound

    try:
        return knowledge.find_collection(user.id, id_or_name)
    except NotFound:
        raise ParleyError(f"no collection {id_or_name!r} that {user.username} can see") from None


async def _with_embedder(args, work):
    import httpx

    from parley.knowledge.grounding import Embedder
    from parley.serving.cluster_auth import auth_headers
    from parley.serving.cluster_client import ClusterClient
    from parley.serving.cluster_errors import ClusterError

    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0),
                                 headers=auth_headers(cluster_secret(args))) as http:
        try:
            return await work(Embedder.of_cluster(ClusterClient(http, args.controller_address)))
        except ClusterError as exc:
            raise ParleyError(f"embedding failed: {exc.message} (is the embedding model served? `parley serve` "
                              f"serves all-minilm-l6-v2)") from None
        except httpx.HTTPError as exc:
            raise ParleyError(f"the controller at {args.controller_address} cannot be reached ({exc})") from None


def _refused(fn):
    from parley.knowledge.parsing import DocumentError
    from parley.store.assistants import Forbidden
    from parley.store.conversations import NotFound
    from parley.store.knowledge import KnowledgeError

    def run(args):
        try:
            return fn(args)
        except (NotFound, Forbidden, KnowledgeError, DocumentError) as exc:
            raise ParleyError(str(exc)) from None
    return run


# -- knowledge --------------------------------------------------------------------------------------


@_refused
def run_create(args) -> int:
    from parley.store.knowledge import Knowledge

    db, user = _store(args)
    c = Knowledge(db).create_collection(user.id, args.name, args.embedding_model, args.description, args.shared)
    print(f"{c.id}  {c.name}  (embedded by {c.embedding_model})")
    return 0


@_refused
def run_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from parley.store.knowledge import Knowledge

    db, user = _store(args)
    table = Table("id", "name", "owner", "shared", "documents", "chunks", "embedding model")
    for c in Knowledge(db).list_collections(user.id):
        table.add_row(c.id, c.name, c.owner, "yes" if c.shared else "", str(c.documents), str(c.chunks),
                      c.embedding_model)
    Console().print(table)
    return 0


@_refused
def run_add(args) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from parley.knowledge.grounding import ingest
    from parley.knowledge.parsing import media_type
    knowledge, user, collection = _knowledge(args)
    for path in args.files:
        if not path.is_file():
            raise ParleyError(f"{path}: no such file")
        media_type(path.name)  # an unsupported type fails before anything is embedded

    async def work(embedder) -> list[str]:
        failed: list[str] = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=False) as progress:
            overall = progress.add_task(f"{collection.name}: documents", total=len(args.files))
            for path in args.files:
                task = progress.add_task(f"  {path.name}: parsing", total=None)

                def report(stage: str, done: int, total: int, task=task, name=path.name) -> None:
                    progress.update(task, description=f"  {name}: embedding chunks", completed=done, total=total)

                try:
                    document = await ingest(knowledge, embedder, user.id, collection.id, path.name,
                                            path.read_bytes(), report)
                except ParleyError as exc:
                    failed.append(f"{path}: {exc}")
                    progress.update(task, description=f"  {path.name}: [red]failed[/]")
                    continue
                progress.update(task, description=f"  {path.name}: {document.chunk_count} chunks"
                                + (f", {document.pages} pages" if document.pages else ""))
                progress.advance(overall)
        return failed

    failed = asyncio.run(_with_embedder(args, work))
    for line in failed:
        print(line, file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(args.files)} files failed", file=sys.stderr)
        return 1
    return 0


@_refused
def run_documents(args) -> int:
    knowledge, user, collection = _knowledge(args)
    for d in knowledge.documents(user.id, collection.id):
        pages = f"{d.pages} pages, " if d.pages else ""
        print(f"{d.id}\t{d.filename}\t{pages}{d.chunk_count} chunks\t{d.size_bytes} bytes")
    return 0


@_refused
def run_remove(args) -> int:
    knowledge, user, collection = _knowledge(args)
    if args.document_id not in {d.id for d in knowledge.documents(user.id, collection.id)}:
        raise ParleyError(f"collection {collection.name!r} has no document {args.document_id}")
    knowledge.delete_document(user.id, args.document_id)
    print(f"removed document {args.document_id}")
    return 0


@_refused
def run_search(args) -> int:
    from parley.knowledge.grounding import retrieve
    knowledge, user, collection = _knowledge(args)

    async def work(embedder):
        return await retrieve(knowledge, embedder, user.id, [collection.id], args.query, args.top_k, args.min_score,
                              args.mode)

    for s in asyncio.run(_with_embedder(args, work)):
        score = f"  similarity {s.score:.3f}" if s.score is not None else ""
        print(f"[{s.n}] {s.label()}{score}\n{s.text}\n")
    return 0


@_refused
def run_reindex(args) -> int:
    from rich.progress import Progress

    from parley.knowledge.grounding import reindex
    knowledge, user, collection = _knowledge(args)

    async def work(embedder):
        with Progress() as progress:
            task = progress.add_task(f"re-embedding {collection.name} with {args.embedding_model}", total=None)
            return await reindex(knowledge, embedder, user.id, collection.id, args.embedding_model,
                                 lambda done, total: progress.update(task, completed=done, total=total))

    view = asyncio.run(_with_embedder(args, work))
    print(f"{view.name}: {view.chunks} chunks embedded by {view.embedding_model} ({view.dimensions} dimensions)")
    return 0


@_refused
def run_delete(args) -> int:
    knowledge, user, collection = _knowledge(args)
    knowledge.delete_collection(user.id, collection.id)
    print(f"deleted {collection.name}")
    return 0


# -- assistants ---------------------------------------------------------------------------------------


def _spec(data: dict):
    from pydantic import ValidationError

    from parley.store.assistants import AssistantSpec

    try:
        return AssistantSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'assistant'}: {e['msg']}" for e in exc.errors())
        raise ParleyError(f"not a valid assistant: {problems}") from None


@_refused
def run_assistant_create(args) -> int:
    from parley.store.assistants import Assistants
    from parley.store.knowledge import Knowledge

    db, user = _store(args)
    knowledge = Knowledge(db)
    spec = _spec({"name": args.name, "base_model": args.base_model, "description": args.description,
                  "system_prompt": args.system_prompt, "temperature": args.temperature, "top_p": args.top_p,
                  "max_tokens": args.max_tokens, "starters": args.starter, "shared": args.shared,
                  "in_battles": args.in_battles, "top_k": args.top_k, "min_score": args.min_score,
                  "collections": [_collection(knowledge, user, c).id for c in args.knowledge]})
    if spec.in_battles and not spec.shared:
        raise ParleyError("--in-battles needs --shared")
    a = Assistants(db).create(user, spec)
    print(f"{a.id}  {a.name}  (on {a.base_model})")
    return 0


@_refused
def run_assistant_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from parley.store.assistants import Assistants

    db, user = _store(args)
    table = Table("id", "name", "base model", "owner", "shared", "knowledge")
    for a in Assistants(db).list(user):
        table.add_row(a.id, a.name, a.base_model, a.owner, "yes" if a.shared else "", ", ".join(a.collection_names))
    Console().print(table)
    return 0


def _find(db, user, id_or_name: str):
    from parley.store.assistants import Assistants
    from parley.store.conversations import NotFound

    try:
        return Assistants(db).find(user, id_or_name)
    except NotFound:
        raise ParleyError(f"no assistant {id_or_name!r} that {user.username} can see") from None


@_refused
def run_assistant_show(args) -> int:
    db, user = _store(args)
    print(_find(db, user, args.assistant).model_dump_json(indent=2))
    return 0


@_refused
def run_assistant_delete(args) -> int:
    from parley.store.assistants import Assistants

    db, user = _store(args)
    a = _find(db, user, args.assistant)
    Assistants(db).delete(user, a.id)
    print(f"deleted {a.name} ({a.id})")
    return 0


def exported(a) -> dict:
    """The assistant's JSON: its spec, with its collections by name (ids differ between databases)."""
    from parley.store.assistants import AssistantSpec

    data = a.model_dump(include=set(AssistantSpec.model_fields))
    data["collections"] = list(a.collection_names)
    return data


@_refused
def run_assistant_export(args) -> int:
    db, user = _store(args)
    text = json.dumps(exported(_find(db, user, args.assistant)), indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


@_refused
def run_assistant_import(args) -> int:
    from parley.store.assistants import Assistants
    from parley.store.knowledge import Knowledge

    db, user = _store(args)
    assistants, knowledge = Assistants(db), Knowledge(db)
    specs = []
    for path in args.files:  # all files are checked before any assistant is written
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ParleyError(f"{path}: {exc}") from None
        if not isinstance(data, dict):
            raise ParleyError(f"{path}: not a JSON object")
        data["collections"] = [_collection(knowledge, user, c).id for c in data.get("collections") or []]
        specs.append(_spec(data))
    own = {a.name: a for a in assistants.list(user) if a.owner == user.username}
    for path, spec in zip(args.files, specs):
        if spec.name in own and not args.replace:
            raise ParleyError(f"{path}: you have an assistant named {spec.name!r} already (--replace updates it)")
    for spec in specs:
        a = assistants.update(user, own[spec.name].id, spec) if spec.name in own else assistants.create(user, spec)
        print(f"{a.id}  {a.name}")
    return 0
