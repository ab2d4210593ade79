"""Knowledge at work: ingesting documents (parse, chunk, embed, store), hybrid retrieval, and an assistant applied
to a chat request (its system prompt, its defaults, and the retrieved chunks as numbered sources).

Embeddings come from a served embedding model through the cluster (`/v1/embeddings`' path), so the web app, the
API and the command line embed with the same model the collection names.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import numpy as np

from parley.knowledge.chunking import CHUNK_TOKENS, chunk_sections, token_spans
from parley.knowledge.parsing import parse
from parley.serving.cluster_client import Cluster
from parley.serving.openai_schemas import SourceOut
from parley.store.assistants import AssistantView
from parley.store.conversations import NotFound
from parley.store.knowledge import DocumentView, Knowledge

EMBED_BATCH = 32
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
SEARCH_MODES = ("hybrid", "vector", "keyword")
SYSTEM_ROLES = ("system", "developer")  # OpenAI's newer name for the system message
SOURCES_HEADER = ("Answer using the numbered sources below. Cite each source you use by its number in brackets, "
                  "like [1]. If the sources do not hold the answer, say that you do not know.")


class Source(SourceOut):
    """A retrieved chunk as a reply cites it, `[n]`: what the API sends (SourceOut), and the chunk's id."""

    chunk_id: int

    def label(self) -> str:
        where = self.filename + (f", page {self.page}" if self.page else "")
        return where + (f", {self.heading}" if self.heading else "")


class Embedder:
    """Vectors from an embedding model, a batch at a time: `batch(model, texts)` gives one vector per text."""

    def __init__(self, batch: Callable[[str, list[str]], Awaitable[list[list[float]]]]):
        self._batch = batch

    @classmethod
    def of_cluster(cls, cluster: Cluster) -> Embedder:
        """From the workers that serve the model (what the web app, the API and the command line use)."""
        async def batch(model: str, texts: list[str]) -> list[list[float]]:
            return (await cluster.embed(model, texts))["embedding"]
        return cls(batch)

    async def embed(self, model: str, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            vectors += await self._batch(model, texts[start:start + EMBED_BATCH])
            if progress is not None:
                progress(len(vectors))
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


async def ingest(knowledge: Knowledge, embedder: Embedder, user_id: int, collection_id: str, filename: str,
                 data: bytes, progress: Callable[[str, int, int], None] | None = None) -> DocumentView:
    """Parse, chunk, embed and store one document. `progress(stage, done, total)`: "parsed", then "embedded"."""
    collection = await asyncio.to_thread(knowledge.get_collection, user_id, collection_id)
    if not collection.writable:  # shared with the user, not theirs to change
        raise NotFound("collection")
    parsed = await asyncio.to_thread(parse, filename, data)
    chunks = await asyncio.to_thread(chunk_sections, parsed.sections)
    if progress:
        progress("parsed", 0, len(chunks))
    vectors = await embedder.embed(collection.embedding_model, [c.text for c in chunks],
                                   (lambda done: progress("embedded", done, len(chunks))) if progress else None)
    return await asyncio.to_thread(knowledge.add_document, user_id, collection_id, filename, parsed.media_type,
                                   len(data), hashlib.sha256(data).hexdigest(), parsed.pages, chunks, vectors,
                                   collection.embedding_model)


async def reindex(knowledge: Knowledge, embedder: Embedder, user_id: int, collection_id: str, model: str,
                  progress: Callable[[int, int], None] | None = None):
    """Embed every chunk again with `model`; the collection is then `model`'s."""
    rows = await asyncio.to_thread(knowledge.chunk_texts, user_id, collection_id)
    vectors = await embedder.embed(model, [t for _, t in rows],
                                   (lambda done: progress(done, len(rows))) if progress else None)
    return await asyncio.to_thread(knowledge.replace_embeddings, user_id, collection_id, model,
                                   [i for i, _ in rows], vectors)


def fuse(rankings: list[list[int]], k: int = RRF_K) -> list[int]:
    """Reciprocal rank fusion: ids by the sum of 1/(k + rank) over the rankings they appear in."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda i: -scores[i])


async def retrieve(knowledge: Knowledge, embedder: Embedder, user_id: int, collection_ids: list[str], question: str,
                   top_k: int = 5, min_score: float | None = 0.25, mode: str = "hybrid") -> list[Source]:
    """The chunks that best answer `question` among the collections the user may search.

    hybrid: full-text and vector rankings fused by rank; vector or keyword: one of them alone. `min_score`, the
    relevance floor, is the least cosine similarity a chunk must have to the question (None: no floor; the
    keyword mode has none)."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode is one of {SEARCH_MODES}")
    by_model = await asyncio.to_thread(knowledge.searchable, user_id, collection_ids)
    if not by_model or not question.strip():
        return []
    spans = token_spans(question)
    if len(spans) > CHUNK_TOKENS:  # an embedding model's window is short: the question's start stands for it
        question = question[:spans[CHUNK_TOKENS - 1][1]]
    pool = max(4 * top_k, 20)
    rankings: list[list[int]] = []
    similarity: dict[int, float] = {}
    if mode != "keyword":
        for model, cids in by_model.items():
            vector = (await embedder.embed(model, [question]))[0]
            found = await asyncio.to_thread(knowledge.vector_search, user_id, cids, model, vector, pool)
            similarity.update(found)
            rankings.append([i for i, _ in found])
            if mode == "hybrid":
                hits = await asyncio.to_thread(knowledge.keyword_search, user_id, cids, question, pool)
                rankings.append([i for i, _ in hits])
                missing = [i for i, _ in hits if i not in similarity]
                similarity.update(await asyncio.to_thread(knowledge.similarities, missing, vector))
    else:
        ids = [cid for cids in by_model.values() for cid in cids]
        hits = await asyncio.to_thread(knowledge.keyword_search, user_id, ids, question, pool)
        rankings.append([i for i, _ in hits])
    order = fuse(rankings)
    if mode != "keyword" and min_score is not None:
        order = [i for i in order if similarity.get(i, -1.0) >= min_score]
    order = order[:top_k]
    details = await asyncio.to_thread(knowledge.chunks, order)
    return [Source(n=n, chunk_id=i, document_id=details[i].document_id, collection_id=details[i].collection_id,
                   filename=details[i].filename, page=details[i].page, heading=details[i].heading,
                   text=details[i].text, score=round(similarity[i], 4) if i in similarity else None)
            for n, i in enumerate((i for i in order if i in details), start=1)]


def sources_prompt(sources: list[Source]) -> str:
    return SOURCES_HEADER + "\n\n" + "\n\n".join(f"[{s.n}] ({s.label()})\n{s.text}" for s in sources)


def last_question(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def with_assistant(messages: list[dict], assistant: AssistantView, sources: list[Source]) -> list[dict]:
    """The conversation as the base model gets it: one system message (the assistant's system prompt, then a system
    message of the request's own, then the sources, numbered) and the turns as they are. (The sources go in the
    system message: the bundled 135M model answered from them there, and repeated them when they came with the
    question.)"""
    system = [m.get("content") or "" for m in messages if m.get("role") in SYSTEM_ROLES]
    turns = [m for m in messages if m.get("role") not in SYSTEM_ROLES]
    parts = [assistant.system_prompt, *system, sources_prompt(sources) if sources else ""]
    prompt = "\n\n".join(p for p in parts if p)
    return ([{"role": "system", "content": prompt}] if prompt else []) + turns


async def ground(knowledge: Knowledge, embedder: Embedder, user_id: int, assistant: AssistantView,
                 messages: list[dict]) -> tuple[list[dict], list[Source] | None]:
    """An assistant applied to a conversation: the messages for its base model, and the sources they cite (None:
    the assistant has no knowledge)."""
    sources: list[Source] | None = None
    if assistant.collections:
        sources = await retrieve(knowledge, embedder, user_id, assistant.collections, last_question(messages),
                                 assistant.top_k, assistant.min_score)
    return with_assistant(messages, assistant, sources or []), sources
