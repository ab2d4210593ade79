"""Retrieval quality of knowledge collections: recall@5 and MRR for keyword-only, vector-only and hybrid search,
in one run over one collection.

    python benchmarks/retrieval_quality.py [--db sqlite|postgresql] [--top-k 5]

The corpus is the Python Language Reference as the standard library ships it (79 documents; see
knowledge_corpus.py for the source, its licence and the 30 questions). Every document is ingested as a user's would
be (parsed, chunked by 200 tokens with 40 of overlap, embedded by the bundled all-MiniLM-L6-v2 in this process,
stored). Each question is searched three ways with no relevance floor; a question counts for recall@k when one of
its top k chunks holds its answer passage, and its reciprocal rank is 1/(rank of the first such chunk) within the
top k (0 when none). Prints a table; writes benchmarks/results/retrieval_quality.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from knowledge_common import MINILM, bench_user, database, minilm_embedder
from knowledge_corpus import QUESTIONS, corpus, relevant
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from serve_stack import cpu_model

from parley.knowledge.grounding import SEARCH_MODES, ingest, retrieve
from parley.store.knowledge import Knowledge


async def run(args) -> dict:
    embedder = minilm_embedder()
    with database(args.db) as db:
        user = bench_user(db)
        knowledge = Knowledge(db)
        collection = knowledge.create_collection(user.id, "Python reference", MINILM)
        documents = corpus()
        started = time.perf_counter()
        with Progress(transient=True) as progress:
            task = progress.add_task("ingesting the corpus", total=len(documents))
            for name, text in documents.items():
                await ingest(knowledge, embedder, user.id, collection.id, name, text.encode())
                progress.advance(task)
        ingest_s = time.perf_counter() - started
        chunks = knowledge.get_collection(user.id, collection.id).chunks
        results = {}
        for mode in SEARCH_MODES:
            hits, reciprocal = 0, 0.0
            for question, phrase in QUESTIONS:
                found = await retrieve(knowledge, embedder, user.id, [collection.id], question, top_k=args.top_k,
                                       min_score=None, mode=mode)
                rank = next((s.n for s in found if relevant(s.text, phrase)), None)
                hits += rank is not None
                reciprocal += 1.0 / rank if rank else 0.0
            results[mode] = {"recall": hits / len(QUESTIONS), "mrr": reciprocal / len(QUESTIONS)}
    return {"documents": len(documents), "chunks": chunks, "ingest_s": ingest_s, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "retrieval_quality.json"))
    args = parser.parse_args()
    out = asyncio.run(run(args))
    table = Table(title=f"Retrieval over {out['documents']} documents, {out['chunks']} chunks, {len(QUESTIONS)} "
                        f"questions ({args.db}; {cpu_model()})")
    table.add_column("search")
    table.add_column(f"recall@{args.top_k}", justify="right")
    table.add_column(f"MRR@{args.top_k}", justify="right")
    for mode in ("keyword", "vector", "hybrid"):
        r = out["results"][mode]
        table.add_row(mode, f"{r['recall']:.2f}", f"{r['mrr']:.3f}")
    Console(width=120).print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu_model(), "args": vars(args), **out}, indent=2))


if __name__ == "__main__":
    main()
