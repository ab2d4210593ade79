"""One Arena battle as parley records it: the web UI's store writes votes in this shape and the
ratings read it (FastChat's vote types and field names)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

VOTE_TYPES = {"leftvote": "model_a", "rightvote": "model_b", "tievote": "tie", "bothbad_vote": "tie (bothbad)"}
Winner = Literal["model_a", "model_b", "tie", "tie (bothbad)"]


class Battle(BaseModel):
    model_a: str
    model_b: str
    winner: Winner
    anony: bool = True
    tstamp: float = 0.0
    question_id: str | None = None
    judge: str | None = None
    turn: int = 1
    conversation_a: list[dict] = Field(default_factory=list)  # OpenAI-format messages
    conversation_b: list[dict] = Field(default_factory=list)
