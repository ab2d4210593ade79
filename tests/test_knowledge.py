"""Knowledge: documents parsed, chunked by tokens, embedded by the bundled all-MiniLM-L6-v2 (the real model,
in-process) and searched by full text and by vector, on SQLite (sqlite-vec, FTS5) and on a real PostgreSQL
(pgvector, tsvector)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from parley.knowledge.chunking import chunk_sections, token_spans
from parley.knowledge.grounding import Embedder, ingest, reindex, retrieve
from parley.knowledge.parsing import DocumentError, Section, parse
from parley.store.accounts import Accounts
from parley.store.conversations import NotFound
from parley.store.knowledge import Knowledge, KnowledgeError
from tests.knowledge_files import HTML, MARKDOWN, docx_bytes, pdf_bytes

MINILM = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def minilm():
    """The bundled embedding model, in this process (the same engine a worker serves it with)."""
    from parley.engines.engine_options import SentenceTransformersOptions
    from parley.engines.sentence_embeddings import SentenceEmbeddingEngine
    from parley.models.source import resolve_model_source

    return SentenceEmbeddingEngine.create(resolve_model_source(MINILM), SentenceTransformersOptions())


@pytest.fixture
def embedder(minilm, engine):
    """Vectors from the model a collection names: all-MiniLM-L6-v2, or the bundled chat model (another model, with
    another dimension, for re-indexing)."""
    engines = {MINILM: minilm, "smollm2": engine}

    async def batch(model: str, texts: list[str]) -> list[list[float]]:
        return (await engines[model].embed(texts)).embeddings

    return Embedder(batch)


def users(db):
    accounts = Accounts(db)
    return accounts.create(f"alice{uuid.uuid4().hex[:6]}", "password-1"), accounts.create(f"bob{uuid.uuid4().hex[:6]}",
                                                                                           "password-2")


# -- parsing and chunking (no database) --------------------------------------------------------------


def test_each_document_type_keeps_its_pages_and_headings():
    pdf = parse("report.pdf", pdf_bytes())
    assert pdf.pages == 3 and [s.page for s in pdf.sections] == [1, 2, 3]
    assert "0.4 milligrams per litre" in " ".join(pdf.sections[2].text.split())
    word = parse("survey.docx", docx_bytes())
    assert [(s.heading, "sandy loam" in s.text) for s in word.sections] == [("Soil survey", True), ("Drainage", False)]
    html = parse("note.html", HTML.encode())
    assert [s.heading for s in html.sections] == ["Air quality", "Dust"]
    assert "alert" not in html.text and "color:red" not in html.text and "Home | About" not in html.text
    md = parse("ecology.md", MARKDOWN.encode())
    assert [s.heading for s in md.sections] == ["Ecology", "Mitigation"]
    assert "not a heading" in md.sections[1].text
    assert parse("notes.txt", "plain words\n".encode("utf-16")).text == "plain words"


@pytest.mark.parametrize("name, data, says", [
    ("slides.pptx", b"x", "not a supported document type"),
    ("broken.pdf", b"%PDF-1.4 this is not a PDF", "cannot be read as application/pdf"),
    ("broken.docx", b"PK not a zip", "cannot be read as"),
    ("empty.md", b"   \n\n", "no text found"),
    ("binary.txt", bytes(range(256)) * 4, "not UTF-8 text"),
])
def test_a_file_that_is_not_a_readable_document_is_refused_clearly(name, data, says):
    with pytest.raises(DocumentError, match=says) as refused:
        parse(name, data)
    assert name in str(refused.value)


def test_chunks_are_slices_of_the_text_within_the_token_window_and_overlap():
    text = " ".join(f"Sentence {i} says the value of item {i} is {i * 7} units." for i in range(120))
    chunks = chunk_sections([Section(text, page=4, heading="Tables")], size=100, overlap=20)
    assert len(chunks) > 5
    for a, b in zip(chunks, chunks[1:]):
        assert a.text in text and a.token_count <= 100 and (a.page, a.heading) == (4, "Tables")
        tail = a.text[-30:]
        assert tail in b.text  # the next chunk starts inside this one: the overlap
    assert all(len(token_spans(c.text)) <= 100 for c in chunks)
    # short sections on one page are packed together; a new page starts a new chunk
    small = chunk_sections([Section("one", 1, "A"), Section("two", 1, "B"), Section("three", 2, "C")], size=50)
    assert [(c.text, c.page, c.heading) for c in small] == [("one\n\ntwo", 1, "A"), ("three", 2, "C")]


# -- the store, on both databases -------------------------------------------------------------------


async def test_hybrid_retrieval_finds_the_page_that_answers(db, embedder):
    alice, _ = users(db)
    knowledge = Knowledge(db)
    collection = knowledge.create_collection(alice.id, "Kestrel", MINILM)
    document = (await ingest(knowledge, embedder, alice.id, collection.id, "kestrel.pdf", pdf_bytes()))
    assert document.pages == 3 and document.chunk_count == 3
    question = "What is the phosphorus discharge limit?"
    for mode in ("hybrid", "vector", "keyword"):
        found = (await retrieve(knowledge, embedder, alice.id, [collection.id], question, top_k=2, mode=mode))
        assert found and found[0].page == 3 and found[0].filename == "kestrel.pdf", mode
        assert [s.n for s in found] == list(range(1, len(found) + 1))
    noise = (await retrieve(knowledge, embedder, alice.id, [collection.id], "Who won the football cup final in 1966?",
                         top_k=3, min_score=0.3))
    assert noise == []  # the relevance floor: nothing in the collection is about that
    view = knowledge.get_collection(alice.id, collection.id)
    assert (view.documents, view.chunks, view.dimensions) == (1, 3, 384)


async def test_a_private_collection_is_invisible_to_another_user(db, embedder):
    alice, bob = users(db)
    knowledge = Knowledge(db)
    private = knowledge.create_collection(alice.id, "Private", MINILM)
    shared = knowledge.create_collection(alice.id, "Shared", MINILM, shared=True)
    for c in (private, shared):
        (await ingest(knowledge, embedder, alice.id, c.id, "kestrel.pdf", pdf_bytes()))
    assert {c.name for c in knowledge.list_collections(bob.id)} == {"Shared"}
    with pytest.raises(NotFound):
        knowledge.get_collection(bob.id, private.id)
    with pytest.raises(NotFound):
        knowledge.documents(bob.id, private.id)
    question = "What noise level was measured at Heron Cottage?"
    assert (await retrieve(knowledge, embedder, bob.id, [private.id], question)) == []
    found = (await retrieve(knowledge, embedder, bob.id, [private.id, shared.id], question))
    assert found and {s.collection_id for s in found} == {shared.id}
    # a shared collection can be read, not changed, by others
    assert knowledge.get_collection(bob.id, shared.id).writable is False
    with pytest.raises(NotFound):
        (await ingest(knowledge, embedder, bob.id, shared.id, "x.md", b"# x\nsome words"))
    document = knowledge.documents(alice.id, private.id)[0]
    for refused in (lambda: knowledge.delete_document(bob.id, document.id),
                    lambda: knowledge.delete_collection(bob.id, shared.id),
                    lambda: knowledge.update_collection(bob.id, shared.id, shared=False)):
        with pytest.raises(NotFound):
            refused()
    assert knowledge.get_collection(alice.id, private.id).chunks == 3


async def test_deleting_a_document_removes_its_chunks_vectors_and_full_text(db, embedder):
    alice, _ = users(db)
    knowledge = Knowledge(db)
    c = knowledge.create_collection(alice.id, "Two", MINILM)
    pdf = (await ingest(knowledge, embedder, alice.id, c.id, "kestrel.pdf", pdf_bytes()))
    (await ingest(knowledge, embedder, alice.id, c.id, "soil.docx", docx_bytes()))
    assert knowledge.keyword_search(alice.id, [c.id], "phosphorus", 10)
    knowledge.delete_document(alice.id, pdf.id)
    assert [d.filename for d in knowledge.documents(alice.id, c.id)] == ["soil.docx"]
    assert knowledge.keyword_search(alice.id, [c.id], "phosphorus Heron", 10) == []
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM chunks WHERE document_id = %d" % pdf.id).scalar() == 0
        if db.is_sqlite:  # the FTS5 index lost the document's rows too
            assert connection.exec_driver_sql(
                "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'phosphorus'").scalar() == 0
    remaining = knowledge.get_collection(alice.id, c.id).chunks
    vector = (await embedder.embed(MINILM, ["soil"]))[0]
    assert len(knowledge.vector_search(alice.id, [c.id], MINILM, vector, 50)) == remaining
    knowledge.delete_collection(alice.id, c.id)
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM chunks").scalar() == 0


async def test_a_collection_knows_its_embedding_model_and_reindexing_changes_it(db, embedder):
    alice, _ = users(db)
    knowledge = Knowledge(db)
    c = knowledge.create_collection(alice.id, "Kestrel", MINILM)
    (await ingest(knowledge, embedder, alice.id, c.id, "kestrel.pdf", pdf_bytes()))
    chat_vector = (await embedder.embed("smollm2", ["phosphorus limit"]))[0]
    with pytest.raises(KnowledgeError, match="embedded by 'all-minilm-l6-v2'"):
        knowledge.vector_search(alice.id, [c.id], "smollm2", chat_vector, 5)
    view = (await reindex(knowledge, embedder, alice.id, c.id, "smollm2"))
    assert (view.embedding_model, view.dimensions, view.chunks) == ("smollm2", 576, 3)
    found = knowledge.vector_search(alice.id, [c.id], "smollm2", chat_vector, 5)
    assert len(found) == 3 and all(-1.0 <= s <= 1.0 for _, s in found)
    with pytest.raises(KnowledgeError, match="embedded by 'smollm2'"):
        knowledge.vector_search(alice.id, [c.id], MINILM, (await embedder.embed(MINILM, ["x"]))[0], 5)
    # adding a document embeds it by the collection's model now
    (await ingest(knowledge, embedder, alice.id, c.id, "ecology.md", MARKDOWN.encode()))
    with pytest.raises(KnowledgeError, match="is embedded by 'smollm2', not 'all-minilm-l6-v2'"):
        knowledge.add_document(alice.id, c.id, "x.txt", "text/plain", 1, "0" * 64, None,
                               chunk_sections([Section("x")]), np.zeros((1, 384), np.float32), MINILM)


def test_names_of_collections_are_checked(db):
    alice, bob = users(db)
    knowledge = Knowledge(db)
    knowledge.create_collection(alice.id, "Reports", MINILM)
    with pytest.raises(KnowledgeError, match="already"):
        knowledge.create_collection(alice.id, "Reports", MINILM)
    knowledge.create_collection(bob.id, "Reports", MINILM)  # another user's namesake is fine
    with pytest.raises(KnowledgeError, match="1-100 characters"):
        knowledge.create_collection(alice.id, " ", MINILM)
