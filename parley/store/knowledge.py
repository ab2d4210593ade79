"""Knowledge collections, their documents and chunks, and searching them (full text and vectors).

A collection is its owner's alone unless shared; another user's private collection is "not found", exactly as
one that does not exist, in every call here, searches included. Only the owner changes a collection.
Vectors: sqlite-vec's `vec_distance_cosine` on SQLite, pgvector's `<=>` on PostgreSQL (exact search: a
collection's chunks are filtered first). Full text: FTS5's bm25 on SQLite, `ts_rank` over a tsvector on PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

import numpy as np
from pydantic import BaseModel
from sqlalchemy import bindparam, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from parley.errors import ParleyError
from parley.knowledge.chunking import TextChunk
from parley.store.conversations import NotFound
from parley.store.database import Database
from parley.store.models import Chunk, Collection, Document, User

NAME = re.compile(r"^\S(.{0,98}\S)?$")
WORD = re.compile(r"\w+", re.UNICODE)
# Words too common to find anything by (the keyword query keeps the rest, joined by OR).
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves tell say says said give gives""".split())


class KnowledgeError(ParleyError):
    """A request the knowledge store refuses: a clash of embedding models, a bad name, a duplicate."""


class CollectionView(BaseModel):
    id: str
    name: str
    description: str
    shared: bool
    owner: str
    embedding_model: str
    dimensions: int | None
    documents: int
    chunks: int
    created_at: datetime
    writable: bool = False  # whether the user asking may change it


class DocumentView(BaseModel):
    id: int
    collection_id: str
    filename: str
    media_type: str
    size_bytes: int
    pages: int | None
    chunk_count: int
    created_at: datetime


class ChunkView(BaseModel):
    id: int
    document_id: int
    collection_id: str
    filename: str
    page: int | None
    heading: str | None
    text: str


def keyword_terms(question: str, limit: int = 32) -> list[str]:
    """The question's words worth searching for: no stopwords, no repeats, in order."""
    seen: dict[str, None] = {}
    for word in WORD.findall(question.lower()):
        if word not in STOPWORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)[:limit]


class Knowledge:
    def __init__(self, db: Database):
        self.db = db

    # -- collections ------------------------------------------------------------------------------

    @staticmethod
    def _visible(user_id: int):
        return or_(Collection.user_id == user_id, Collection.shared.is_(True))

    def _view(self, s, c: Collection, user_id: int) -> CollectionView:
        documents = s.scalar(select(func.count()).select_from(Document).where(Document.collection_id == c.id))
        chunks = s.scalar(select(func.count()).select_from(Chunk).where(Chunk.collection_id == c.id))
        owner = s.get(User, c.user_id)
        return CollectionView(id=c.id, name=c.name, description=c.description, shared=c.shared,
                              owner=owner.username if owner else "?", embedding_model=c.embedding_model,
                              dimensions=c.dimensions, documents=documents, chunks=chunks, created_at=c.created_at,
                              writable=c.user_id == user_id)

    def _get(self, s, user_id: int, collection_id: str, owned: bool = False) -> Collection:
        c = s.get(Collection, collection_id) if isinstance(collection_id, str) else None
        if c is None or not (c.user_id == user_id or (c.shared and not owned)):
            raise NotFound("collection")
        return c

    def create_collection(self, user_id: int, name: str, embedding_model: str, description: str = "",
                          shared: bool = False) -> CollectionView:
        name = name.strip()
        if not NAME.match(name):
            raise KnowledgeError("a collection's name is 1-100 characters, not starting or ending with a space")
        try:
            with self.db.session() as s:
                c = Collection(user_id=user_id, name=name, description=description, shared=shared,
                               embedding_model=embedding_model)
                s.add(c)
                s.flush()
                return self._view(s, c, user_id)
        except IntegrityError:
            raise KnowledgeError(f"you have a collection named {name!r} already") from None

    def list_collections(self, user_id: int) -> list[CollectionView]:
        with self.db.session() as s:
            found = s.scalars(select(Collection).where(self._visible(user_id)).order_by(Collection.name)).all()
            return [self._view(s, c, user_id) for c in found]

    def get_collection(self, user_id: int, collection_id: str) -> CollectionView:
        with self.db.session() as s:
            return self._view(s, self._get(s, user_id, collection_id), user_id)

    def find_collection(self, user_id: int, id_or_name: str) -> CollectionView:
        """By id, or by name among the user's own collections, then the shared ones."""
        with self.db.session() as s:
            c = s.get(Collection, id_or_name)
            if c is None or not (c.user_id == user_id or c.shared):
                c = s.scalars(select(Collection).where(self._visible(user_id), Collection.name == id_or_name)
                              .order_by((Collection.user_id == user_id).desc())).first()
            if c is None:
                raise NotFound("collection")
            return self._view(s, c, user_id)

    def update_collection(self, user_id: int, collection_id: str, name: str | None = None,
                          description: str | None = None, shared: bool | None = None) -> CollectionView:
        try:
            with self.db.session() as s:
                c = self._get(s, user_id, collection_id, owned=True)
                if name is not None:
                    if not NAME.match(name.strip()):
                        raise KnowledgeError("a collection's name is 1-100 characters")
                    c.name = name.strip()
                if description is not None:
                    c.description = description
                if shared is not None:
                    c.shared = shared
                s.flush()
                return self._view(s, c, user_id)
        except IntegrityError:
            raise KnowledgeError(f"you have a collection named {name!r} already") from None

    def delete_collection(self, user_id: int, collection_id: str) -> None:
        with self.db.session() as s:
            s.delete(self._get(s, user_id, collection_id, owned=True))  # its documents and chunks go by cascade

    def searchable(self, user_id: int, collection_ids: Sequence[str]) -> dict[str, list[str]]:
        """Those of the collections that the user may search, by the model that embedded them."""
        if not collection_ids:
            return {}
        with self.db.session() as s:
            rows = s.execute(select(Collection.id, Collection.embedding_model)
                             .where(Collection.id.in_(list(collection_ids)), self._visible(user_id))).all()
        by_model: dict[str, list[str]] = {}
        for cid, model in rows:
            by_model.setdefault(model, []).append(cid)
        return by_model

    # -- documents --------------------------------------------------------------------------------

    def documents(self, user_id: int, collection_id: str) -> list[DocumentView]:
        with self.db.session() as s:
            c = self._get(s, user_id, collection_id)
            found = s.scalars(select(Document).where(Document.collection_id == c.id).order_by(Document.id)).all()
            return [DocumentView.model_validate(d, from_attributes=True) for d in found]

    def add_document(self, user_id: int, collection_id: str, filename: str, media_type: str, size_bytes: int,
                     sha256: str, pages: int | None, chunks: list[TextChunk], vectors: np.ndarray,
                     model: str) -> DocumentView:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        with self.db.session() as s:
            c = self._get(s, user_id, collection_id, owned=True)
            if c.embedding_model != model:
                raise KnowledgeError(f"collection {c.name!r} is embedded by {c.embedding_model!r}, not {model!r}")
            dims = int(vectors.shape[1]) if len(vectors) else c.dimensions
            if c.dimensions is not None and dims != c.dimensions:
                raise KnowledgeError(f"collection {c.name!r} holds {c.dimensions}-dimensional vectors; "
                                     f"{model!r} gave {dims}")
            c.dimensions = dims
            d = Document(collection_id=c.id, filename=filename[:255], media_type=media_type, size_bytes=size_bytes,
                         sha256=sha256, pages=pages, chunk_count=len(chunks))
            s.add(d)
            s.flush()
            s.add_all([Chunk(document_id=d.id, collection_id=c.id, position=i, text=ch.text, page=ch.page,
                             heading=(ch.heading or None) and ch.heading[:500], token_count=ch.token_count,
                             embedding=vectors[i]) for i, ch in enumerate(chunks)])
            s.flush()
            return DocumentView.model_validate(d, from_attributes=True)

    def delete_document(self, user_id: int, document_id: int) -> None:
        """The document, its chunks and their vectors (and their full-text entries)."""
        with self.db.session() as s:
            d = s.get(Document, document_id) if isinstance(document_id, int) else None
            if d is None:
                raise NotFound("document")
            self._get(s, user_id, d.collection_id, owned=True)
            s.delete(d)  # its chunks go by cascade (and their full-text rows by the triggers, on SQLite)

    # -- re-indexing ------------------------------------------------------------------------------

    def chunk_texts(self, user_id: int, collection_id: str) -> list[tuple[int, str]]:
        with self.db.session() as s:
            c = self._get(s, user_id, collection_id, owned=True)
            return [tuple(row) for row in s.execute(select(Chunk.id, Chunk.text).where(Chunk.collection_id == c.id)
                                                    .order_by(Chunk.id))]

    def replace_embeddings(self, user_id: int, collection_id: str, model: str, ids: list[int],
                           vectors: np.ndarray) -> CollectionView:
        """Every chunk's vector from `model`, in one transaction: the collection is then `model`'s."""
        with self.db.session() as s:
            c = self._get(s, user_id, collection_id, owned=True)
            present = set(s.scalars(select(Chunk.id).where(Chunk.collection_id == c.id)))
            if present - set(ids):
                raise KnowledgeError("documents were added while re-indexing: run it again")
            for chunk_id, vector in zip(ids, vectors):
                s.execute(update(Chunk).where(Chunk.id == chunk_id).values(embedding=vector))
            c.embedding_model = model
            c.dimensions = int(vectors.shape[1]) if len(vectors) else None
            s.flush()
            return self._view(s, c, user_id)

    # -- search -----------------------------------------------------------------------------------

    def _searchable(self, s, user_id: int, collection_ids: Sequence[str]) -> list[Collection]:
        return list(s.scalars(select(Collection).where(Collection.id.in_(list(collection_ids)),
                                                       self._visible(user_id))))

    def vector_search(self, user_id: int, collection_ids: Sequence[str], model: str, vector: np.ndarray,
                      limit: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), most similar first, among the collections the user may search. A
        collection embedded by another model than the query's is refused."""
        with self.db.session() as s:
            collections = self._searchable(s, user_id, collection_ids)
            for c in collections:
                if c.embedding_model != model:
                    raise KnowledgeError(f"collection {c.name!r} is embedded by {c.embedding_model!r}; a query "
                                         f"embedded by {model!r} cannot search it")
            ids = [c.id for c in collections]
            if not ids:
                return []
            if self.db.is_sqlite:
                query = text("SELECT id, vec_distance_cosine(embedding, :q) AS d FROM chunks "
                             "WHERE collection_id IN :ids AND embedding IS NOT NULL ORDER BY d LIMIT :n")
                q = np.asarray(vector, dtype=np.float32).tobytes()
            else:
                query = text("SELECT id, embedding <=> CAST(:q AS vector) AS d FROM chunks "
                             "WHERE collection_id IN :ids AND embedding IS NOT NULL ORDER BY d LIMIT :n")
                q = "[" + ",".join(repr(float(x)) for x in vector) + "]"
            rows = s.execute(query.bindparams(bindparam("ids", expanding=True)),
                             {"q": q, "ids": ids, "n": limit}).all()
            return [(int(i), 1.0 - float(d)) for i, d in rows]

    def keyword_search(self, user_id: int, collection_ids: Sequence[str], question: str,
                       limit: int) -> list[tuple[int, float]]:
        """(chunk id, score), best first, by the database's full-text index: any of the question's words."""
        terms = keyword_terms(question)
        if not terms:
            return []
        with self.db.session() as s:
            ids = [c.id for c in self._searchable(s, user_id, collection_ids)]
            if not ids:
                return []
            if self.db.is_sqlite:
                # CROSS JOIN keeps the full-text match as the outer loop (SQLite's planner would otherwise walk the
                # collection's chunks and run the MATCH once for each: 190 ms instead of a few at 1,500 chunks).
                query = text("SELECT chunks.id, -bm25(chunks_fts) AS score FROM chunks_fts "
                             "CROSS JOIN chunks ON chunks.id = chunks_fts.rowid "
                             "WHERE chunks_fts MATCH :q AND chunks.collection_id IN :ids ORDER BY score DESC LIMIT :n")
                q = " OR ".join('"' + t.replace('"', "") + '"' for t in terms)
            else:
                # ts_rank has no inverse document frequency; normalization 1 (by the log of the chunk's length)
                # ranked this benchmark's answers best of those tried (recall@5 0.57 -> 0.63)
                query = text("SELECT id, ts_rank(search, q, 1) AS score FROM chunks, to_tsquery('english', :q) AS q "
                             "WHERE search @@ q AND collection_id IN :ids ORDER BY score DESC LIMIT :n")
                q = " | ".join(terms)
            rows = s.execute(query.bindparams(bindparam("ids", expanding=True)),
                             {"q": q, "ids": ids, "n": limit}).all()
            return [(int(i), float(score)) for i, score in rows]

    def similarities(self, chunk_ids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
        """Cosine similarity of each chunk's vector to `vector` (the chunks come from a search, so are visible)."""
        if not chunk_ids:
            return {}
        with self.db.session() as s:
            rows = s.execute(select(Chunk.id, Chunk.embedding).where(Chunk.id.in_(list(chunk_ids)))).all()
        q = np.asarray(vector, dtype=np.float32)
        q = q / (np.linalg.norm(q) or 1.0)
        out = {}
        for chunk_id, embedding in rows:
            if embedding is not None and len(embedding) == len(q):
                out[chunk_id] = float(np.dot(embedding, q) / (np.linalg.norm(embedding) or 1.0))
        return out

    def chunks(self, chunk_ids: Sequence[int]) -> dict[int, ChunkView]:
        if not chunk_ids:
            return {}
        with self.db.session() as s:
            rows = s.execute(select(Chunk.id, Chunk.document_id, Chunk.collection_id, Document.filename, Chunk.page,
                                    Chunk.heading, Chunk.text).join(Document, Document.id == Chunk.document_id)
                             .where(Chunk.id.in_(list(chunk_ids)))).all()
        return {r[0]: ChunkView(id=r[0], document_id=r[1], collection_id=r[2], filename=r[3], page=r[4],
                                heading=r[5], text=r[6]) for r in rows}
