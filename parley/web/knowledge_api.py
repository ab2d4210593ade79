"""The web app's JSON API for assistants and knowledge: /api/assistants and /api/collections.

Each route acts for the signed-in user (the local user without --auth): another user's private assistant,
collection or document is "not found". Sharing an assistant, and putting it into anonymous battles, is for
admins (they curate what everyone sees); any user may share a collection of their own. A document is uploaded as
the request's body (`?filename=` names it), parsed, chunked and embedded before the answer.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from parley.knowledge.grounding import Source, ingest, reindex, retrieve
from parley.knowledge.parsing import DocumentError
from parley.serving.api_errors import APIError
from parley.serving.cluster_errors import ClusterError
from parley.store.assistants import AssistantSpec, AssistantView, Forbidden
from parley.store.conversations import NotFound
from parley.store.knowledge import CollectionView, DocumentView, KnowledgeError
from parley.store.models import User
from parley.web.services import WebServices

log = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 32 * 1024 * 1024


class AssistantList(BaseModel):
    assistants: list[AssistantView]


class CollectionIn(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)
    shared: bool = False


class CollectionChange(BaseModel):
    model_config = {"extra": "forbid"}
    name: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=2000)
    shared: bool | None = None


class CollectionList(BaseModel):
    collections: list[CollectionView]


class DocumentList(BaseModel):
    documents: list[DocumentView]


class ReindexIn(BaseModel):
    model_config = {"extra": "forbid"}
    embedding_model: str | None = Field(None, min_length=1, max_length=200)  # None: this server's (--embedding-model)


class SearchIn(BaseModel):
    model_config = {"extra": "forbid"}
    query: str = Field(min_length=1, max_length=4000)
    top_k: int = Field(5, ge=1, le=20)
    min_score: float | None = Field(None, ge=-1.0, le=1.0)


class SearchResult(BaseModel):
    sources: list[Source]


def _services(request: Request) -> WebServices:
    return request.app.state.services


def _refusals(exc: Exception) -> APIError:
    if isinstance(exc, NotFound):
        return APIError(404, str(exc), code="not_found")
    if isinstance(exc, Forbidden):
        return APIError(403, str(exc), type="permission_error", code="forbidden")
    if isinstance(exc, (KnowledgeError, DocumentError)):
        return APIError(400, str(exc), code="invalid_knowledge")
    if isinstance(exc, ClusterError):
        return APIError(exc.status, f"the embedding model could not be used: {exc.message}", code=exc.code)
    raise exc


async def _call(fn, *args, **kwargs):
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (NotFound, Forbidden, KnowledgeError, DocumentError) as exc:
        raise _refusals(exc) from None


def _check_curation(user: User, spec: AssistantSpec, before: AssistantView | None = None) -> None:
    """Sharing an assistant, and anonymous battles, are for admins."""
    was_shared, was_in_battles = (before.shared, before.in_battles) if before else (False, False)
    if not user.is_admin and (spec.shared != was_shared or spec.in_battles != was_in_battles):
        raise APIError(403, "only an admin shares assistants or puts them into battles", type="permission_error",
                       code="forbidden")
    if spec.in_battles and not spec.shared:
        raise APIError(400, "an assistant in anonymous battles must be shared", param="in_battles")


def build_knowledge_router() -> APIRouter:
    from parley.web.json_api import check_csrf, current_user

    router = APIRouter(prefix="/api", dependencies=[Depends(check_csrf)])

    # -- assistants -------------------------------------------------------------------------------

    @router.get("/assistants", response_model=AssistantList)
    async def list_assistants(request: Request, user: User = Depends(current_user)) -> AssistantList:
        return AssistantList(assistants=await _call(_services(request).assistants.list, user))

    @router.post("/assistants", response_model=AssistantView, status_code=201)
    async def create_assistant(body: AssistantSpec, request: Request, user: User = Depends(current_user)):
        _check_curation(user, body)
        return await _call(_services(request).assistants.create, user, body)

    @router.get("/assistants/{assistant_id}", response_model=AssistantView)
    async def get_assistant(assistant_id: str, request: Request, user: User = Depends(current_user)):
        return await _call(_services(request).assistants.get, user, assistant_id)

    @router.get("/assistants/{assistant_id}/export", response_model=AssistantSpec)
    async def export_assistant(assistant_id: str, request: Request, user: User = Depends(current_user)):
        view = await _call(_services(request).assistants.get, user, assistant_id)
        return AssistantSpec(**view.model_dump(include=set(AssistantSpec.model_fields)))

    @router.put("/assistants/{assistant_id}", response_model=AssistantView)
    async def update_assistant(assistant_id: str, body: AssistantSpec, request: Request,
                               user: User = Depends(current_user)):
        services = _services(request)
        before = await _call(services.assistants.get, user, assistant_id)
        _check_curation(user, body, before)
        return await _call(services.assistants.update, user, assistant_id, body)

    @router.post("/assistants/{assistant_id}/duplicate", response_model=AssistantView, status_code=201)
    async def duplicate_assistant(assistant_id: str, request: Request, user: User = Depends(current_user)):
        return await _call(_services(request).assistants.duplicate, user, assistant_id)

    @router.delete("/assistants/{assistant_id}", status_code=204)
    async def delete_assistant(assistant_id: str, request: Request, user: User = Depends(current_user)) -> None:
        await _call(_services(request).assistants.delete, user, assistant_id)

    # -- collections and documents ----------------------------------------------------------------

    @router.get("/collections", response_model=CollectionList)
    async def list_collections(request: Request, user: User = Depends(current_user)) -> CollectionList:
        return CollectionList(collections=await _call(_services(request).knowledge.list_collections, user.id))

    @router.post("/collections", response_model=CollectionView, status_code=201)
    async def create_collection(body: CollectionIn, request: Request, user: User = Depends(current_user)):
        services = _services(request)
        model = services.settings.embedding_model
        if not model:
            raise APIError(503, "this server embeds nothing (parley web --embedding-model none)",
                           code="no_embedding_model")
        return await _call(services.knowledge.create_collection, user.id, body.name, model, body.description,
                           body.shared)

    @router.get("/collections/{collection_id}", response_model=CollectionView)
    async def get_collection(collection_id: str, request: Request, user: User = Depends(current_user)):
        return await _call(_services(request).knowledge.get_collection, user.id, collection_id)

    @router.patch("/collections/{collection_id}", response_model=CollectionView)
    async def change_collection(collection_id: str, body: CollectionChange, request: Request,
                                user: User = Depends(current_user)):
        return await _call(_services(request).knowledge.update_collection, user.id, collection_id, body.name,
                           body.description, body.shared)

    @router.delete("/collections/{collection_id}", status_code=204)
    async def delete_collection(collection_id: str, request: Request, user: User = Depends(current_user)) -> None:
        await _call(_services(request).knowledge.delete_collection, user.id, collection_id)

    @router.get("/collections/{collection_id}/documents", response_model=DocumentList)
    async def list_documents(collection_id: str, request: Request, user: User = Depends(current_user)):
        return DocumentList(documents=await _call(_services(request).knowledge.documents, user.id, collection_id))

    @router.post("/collections/{collection_id}/documents", response_model=DocumentView, status_code=201)
    async def upload_document(collection_id: str, request: Request,
                              filename: str = Query(min_length=1, max_length=255),
                              user: User = Depends(current_user)) -> DocumentView:
        """The file is the request's body; the answer comes once it is parsed, chunked, embedded and stored."""
        services = _services(request)
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > MAX_UPLOAD_BYTES:
                raise APIError(413, f"a document is at most {MAX_UPLOAD_BYTES // 2**20} MiB", code="too_large")
        if not data:
            raise APIError(400, "the request's body (the file) is empty", param="body")
        try:
            document = await ingest(services.knowledge, services.embedder, user.id, collection_id, filename,
                                    bytes(data))
        except (NotFound, KnowledgeError, DocumentError, ClusterError) as exc:
            raise _refusals(exc) from None
        log.info("user %s added %s (%d chunks) to collection %s", user.username, filename, document.chunk_count,
                 collection_id)
        return document

    @router.post("/collections/{collection_id}/reindex", response_model=CollectionView)
    async def reindex_collection(collection_id: str, body: ReindexIn, request: Request,
                                 user: User = Depends(current_user)) -> CollectionView:
        """Embed every chunk again (with another embedding model, or the same one after it changed)."""
        services = _services(request)
        model = body.embedding_model or services.settings.embedding_model
        if not model:
            raise APIError(400, "name the embedding model (this server has none)", param="embedding_model")
        try:
            return await reindex(services.knowledge, services.embedder, user.id, collection_id, model)
        except (NotFound, KnowledgeError, ClusterError) as exc:
            raise _refusals(exc) from None

    @router.delete("/documents/{document_id}", status_code=204)
    async def delete_document(document_id: int, request: Request, user: User = Depends(current_user)) -> None:
        await _call(_services(request).knowledge.delete_document, user.id, document_id)

    @router.post("/collections/{collection_id}/search", response_model=SearchResult)
    async def search(collection_id: str, body: SearchIn, request: Request,
                     user: User = Depends(current_user)) -> SearchResult:
        services = _services(request)
        await _call(services.knowledge.get_collection, user.id, collection_id)
        try:
            found = await retrieve(services.knowledge, services.embedder, user.id, [collection_id], body.query,
                                   body.top_k, body.min_score)
        except (KnowledgeError, ClusterError) as exc:
            raise _refusals(exc) from None
        return SearchResult(sources=found)

    return router
