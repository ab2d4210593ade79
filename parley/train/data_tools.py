"""Training-data tools: clean, split long conversations, statistics, train/test split.

Every tool reads ShareGPT or OpenAI-format conversations (JSON or JSONL) and writes OpenAI
`messages` records as JSON lines, keeping each record's id.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
from pathlib import Path

from pydantic import BaseModel

from parley.train.conversations import Sample, Skipped, load_conversations

BLOCKED = re.compile(r"\b(as an ai language model|i'm sorry, but i cannot|i cannot fulfill|openai's (content|use case) polic)",
                     re.IGNORECASE)
HTML = re.compile(r"<(p|div|br|ul|ol|li|pre|code|h[1-6]|table|span|a|b|i|strong|em)\b[^>]*>", re.IGNORECASE)


def write_samples(samples: list[Sample], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps({"id": s.id, "messages": s.messages}, ensure_ascii=False) + "\n")


class CleanReport(BaseModel):
    read: int
    kept: int
    dropped: dict[str, int]
    html_converted: int
    skipped: list[Skipped]


def html_to_markdown(text: str) -> str:
    from markdownify import markdownify

    return markdownify(text, heading_style="ATX", code_language="").strip() if HTML.search(text) else text


def clean(path: Path, output: Path, drop_blocked: bool = True) -> CleanReport:
    """HTML to markdown; drop conversations with an empty or blocked answer; drop exact duplicates."""
    samples, skipped = load_conversations(path)
    dropped = {"empty answer": 0, "blocked answer": 0, "duplicate": 0}
    seen: set[str] = set()
    kept, converted = [], 0
    for sample in samples:
        messages = []
        for m in sample.messages:
            content = html_to_markdown(m["content"])
            converted += content != m["content"]
            messages.append({**m, "content": content})
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        if any(not a.strip() for a in answers):
            dropped["empty answer"] += 1
            continue
        if drop_blocked and any(BLOCKED.search(a) for a in answers):
            dropped["blocked answer"] += 1
            continue
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        if digest in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(digest)
        kept.append(Sample(id=sample.id, messages=messages))
    write_samples(kept, output)
    return CleanReport(read=len(samples) + len(skipped), kept=len(kept), dropped=dropped, html_converted=converted,
                       skipped=skipped)


def split_long(path: Path, output: Path, tokenizer, max_length: int) -> tuple[int, int, list[Skipped]]:
    """Split conversations at round boundaries (a user turn and its answer) so each part fits `max_length` tokens
    as rendered by the model's chat template. A round that alone is too long is kept as its own part (training
    cuts it), so no round is ever dropped, the last one included. Returns (conversations in, parts out, skipped)."""
    samples, skipped = load_conversations(path)
    parts: list[Sample] = []

    def length(messages: list[dict]) -> int:
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    for sample in samples:
        system = [m for m in sample.messages[:1] if m["role"] == "system"]
        body = sample.messages[len(system):]
        rounds = [body[i:i + 2] for i in range(0, len(body), 2)]
        pieces: list[list[dict]] = []
        current: list[dict] = []
        for rnd in rounds:
            if current and length(system + current + rnd) > max_length:
                pieces.append(current)
                current = []
            current = current + rnd
        if current:
            pieces.append(current)
        for k, piece in enumerate(pieces):
            parts.append(Sample(id=sample.id if len(pieces) == 1 else f"{sample.id}_{k}", messages=system + piece))
    write_samples(parts, output)
    return len(samples), len(parts), skipped


class DataStats(BaseModel):
    conversations: int
    skipped: int
    turns: dict[str, float]  # mean, median, max user turns per conversation
    characters: dict[str, float]  # per conversation
    tokens: dict[str, float] | None = None  # per conversation, with a tokenizer
    trained_tokens: int | None = None


def stats(path: Path, tokenizer=None) -> DataStats:
    samples, skipped = load_conversations(path)
    turns = [sum(m["role"] == "user" for m in s.messages) for s in samples] or [0]
    chars = [sum(len(m["content"]) for m in s.messages) for s in samples] or [0]

    def summary(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "median": statistics.median(values), "max": max(values)}

    result = DataStats(conversations=len(samples), skipped=len(skipped), turns=summary(turns), characters=summary(chars))
    if tokenizer is not None and samples:
        from parley.train.masks import MaskBuilder, MaskError

        builder = MaskBuilder(tokenizer)
        lengths, trained = [], 0
        for s in samples:
            try:
                example = builder.build(s.messages)
            except MaskError:
                continue
            lengths.append(len(example.input_ids))
            trained += example.trained_tokens
        result.tokens = summary(lengths or [0])
        result.trained_tokens = trained
    return result


def split(path: Path, train_out: Path, test_out: Path, test_ratio: float, seed: int = 42) -> tuple[int, int]:
    samples, _ = load_conversations(path)
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_test = round(len(samples) * test_ratio)
    test_ids = set(order[:n_test])
    write_samples([s for i, s in enumerate(samples) if i not in test_ids], train_out)
    write_samples([s for i, s in enumerate(samples) if i in test_ids], test_out)
    return len(samples) - n_test, n_test
