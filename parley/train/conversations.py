"""Training conversations: ShareGPT (`conversations`, `from: human|gpt|system`) or OpenAI (`messages`)
records, in a JSON list or JSON lines, detected per record; each normalized to OpenAI messages.

A malformed sample (unknown role, roles out of order, an empty turn, no assistant turn) is
skipped and reported with its id and the reason; nothing is dropped silently.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from parley.jsonfiles import read_records

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
                  "bing": "assistant", "assistant": "assistant", "system": "system"}


class Sample(BaseModel):
    id: str
    messages: list[dict]


class Skipped(BaseModel):
    id: str
    reason: str


def normalize(record: dict, index: int) -> Sample | Skipped:
    """One record as OpenAI messages, or why it cannot be trained on."""
    sample_id = str(record.get("id", index)) if isinstance(record, dict) else str(index)
    if not isinstance(record, dict):
        return Skipped(id=sample_id, reason="not an object")
    if isinstance(record.get("messages"), list):
        raw = [(m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None) for m in record["messages"]]
        roles = {"system": "system", "user": "user", "assistant": "assistant"}
    elif isinstance(record.get("conversations"), list):
        raw = [(m.get("from"), m.get("value")) if isinstance(m, dict) else (None, None) for m in record["conversations"]]
        roles = SHAREGPT_ROLES
    else:
        return Skipped(id=sample_id, reason="neither 'messages' nor 'conversations'")
    messages = []
    for i, (role, content) in enumerate(raw):
        if role not in roles:
            return Skipped(id=sample_id, reason=f"turn {i}: unknown role {role!r}")
        if not isinstance(content, str) or not content.strip():
            return Skipped(id=sample_id, reason=f"turn {i}: empty {roles[role]} turn")
        messages.append({"role": roles[role], "content": content})
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        return Skipped(id=sample_id, reason="no turns")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            return Skipped(id=sample_id, reason=f"roles out of order: turn {i + len(messages) - len(body)} is "
                                                f"{m['role']}, expected {expected}")
    if body[-1]["role"] != "assistant":
        body = body[:-1]  # a trailing user turn has no answer to learn
        messages = messages[:len(messages) - 1]
    if not any(m["role"] == "assistant" for m in body):
        return Skipped(id=sample_id, reason="no assistant turn")
    return Sample(id=sample_id, messages=messages)


def load_conversations(path: Path) -> tuple[list[Sample], list[Skipped]]:
    samples, skipped = [], []
    for index, record in enumerate(read_records(path)):
        result = normalize(record, index)
        (samples if isinstance(result, Sample) else skipped).append(result)
    return samples, skipped
