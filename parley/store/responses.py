"""Responses the API keeps (`/v1/responses` with `store`): for `previous_response_id`, `GET` and `DELETE`.

Each is kept for the user whose key made it (None: the API's static keys, or no keys at all), and only that user
finds it: to anyone else an id is unknown, whether or not it exists.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import delete, select

from parley.store.database import Database
from parley.store.models import StoredResponse


class Kept(BaseModel):
    """A kept response: the conversation it answered (input items, the previous responses' included) and what it
    returned."""

    id: str
    model: str
    created_at: datetime
    previous_response_id: str | None
    input_items: list[dict]
    response: dict


def _owned(user_id: int | None):
    return StoredResponse.user_id.is_(None) if user_id is None else StoredResponse.user_id == user_id


class ResponseStore:
    def __init__(self, db: Database):
        self.db = db

    def save(self, *, response_id: str, user_id: int | None, key_id: str | None, model: str,
             previous_response_id: str | None, input_items: list[dict], response: dict) -> None:
        with self.db.session() as s:
            s.add(StoredResponse(id=response_id, user_id=user_id, key_id=key_id, model=model,
                                 previous_response_id=previous_response_id, input_items=input_items, response=response))

    def get(self, response_id: str, user_id: int | None) -> Kept | None:
        with self.db.session() as s:
            row = s.scalar(select(StoredResponse).where(StoredResponse.id == response_id, _owned(user_id)))
            if row is None:
                return None
            return Kept(id=row.id, model=row.model, created_at=row.created_at,
                        previous_response_id=row.previous_response_id, input_items=row.input_items,
                        response=row.response)

    def delete(self, response_id: str, user_id: int | None) -> bool:
        """Whether there was one to delete."""
        with self.db.session() as s:
            result = s.execute(delete(StoredResponse).where(StoredResponse.id == response_id, _owned(user_id)))
            return result.rowcount > 0
