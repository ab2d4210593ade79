"""Arena battles: pairwise human votes, read from FastChat-format conversation logs or battle files.

FastChat's web server logs one JSON record per vote (`type`: leftvote, rightvote, tievote,
bothbad_vote) with the two sides' states; its `clean_battle_data.py` turns them into battles.
We clean the same way: a side with no model name, a named battle whose shown and served names
differ, an empty conversation, or answers that reveal a model's identity (its name, its maker)
drop the battle, and every reason is counted. Anonymous battles only, unless asked otherwise.
A battle file (a JSON list or JSON lines of `Battle` records, FastChat's `clean_battle_*.json`
included) is read as it is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from parley.arena_record import VOTE_TYPES, Battle
from parley.errors import ParleyError
from parley.jsonfiles import read_records

# Words in an answer that give away who answered (FastChat's list, trimmed to names and makers).
IDENTITY_WORDS = ("vicuna", "lmsys", "koala", "uc berkeley", "open assistant", "laion", "chatglm", "chatgpt", "gpt-4",
                  "openai", "anthropic", "claude", "bard", "palm", "lamda", "google", "gemini", "llama", "mistral",
                  "qwen", "alibaba", "deepseek", "smollm", "hugging face", "huggingface", "network error")


class Cleaning(BaseModel):
    records: int = 0
    battles: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)  # reason -> count

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


def _strip_html(name: str | None) -> str:
    return re.sub(r"<[^>]+>", "", name or "").strip()


def _openai_messages(pairs: list) -> list[dict]:
    roles = {0: "user", 1: "assistant"}
    return [{"role": roles[i % 2], "content": msg or ""} for i, (_, msg) in enumerate(pairs)]


def _leaks_identity(text: str, models: Iterable[str]) -> bool:
    text = text.lower()
    names = {m.lower() for m in models if len(m) >= 3}
    return any(word in text for word in (*IDENTITY_WORDS, *names))


def battle_from_log(row: dict, cleaning: Cleaning, check_identity: bool = True) -> Battle | None:
    """One FastChat vote record as a battle, or None (with the reason counted)."""
    shown = [_strip_html(m) for m in row.get("models") or ["", ""]]
    states = row.get("states") or [{}, {}]
    if len(shown) != 2 or len(states) != 2:
        cleaning.drop("malformed record")
        return None
    served = [s.get("model_name") for s in states]
    if not all(served):
        served = shown
    if bool(shown[0]) != bool(shown[1]):
        cleaning.drop("one side unnamed")
        return None
    anony = shown[0] in ("", "Model A")
    if not anony and shown != served:
        cleaning.drop("shown and served names differ")
        return None
    models = served if anony else shown
    if not all(models):
        cleaning.drop("no model name")
        return None
    conversations = []
    for state in states:
        messages = state.get("messages") or []
        conversations.append(messages[state.get("offset", 0):])
    if not conversations[0] or not conversations[0][0][1]:
        cleaning.drop("empty conversation")
        return None
    answers = " ".join(msg or "" for conv in conversations for _, msg in conv)
    if check_identity and _leaks_identity(answers, models):
        cleaning.drop("identity revealed")
        return None
    return Battle(model_a=models[0], model_b=models[1], winner=VOTE_TYPES[row["type"]], anony=anony,
                  tstamp=float(row.get("tstamp") or 0.0), question_id=str(states[0].get("conv_id") or "") or None,
                  judge=row.get("ip"), turn=max(1, len(conversations[0]) // 2),
                  conversation_a=_openai_messages(conversations[0]), conversation_b=_openai_messages(conversations[1]))


def load_battles(paths: Iterable[Path], anony_only: bool = True, keep_leaks: bool = False,
                 extra: Iterable[Battle] = ()) -> tuple[list[Battle], Cleaning]:
    """Battles from FastChat conversation logs and/or battle files (files, or directories of *.json/*.jsonl),
    plus `extra` ones (the web UI's stored votes), cleaned alike."""
    cleaning = Cleaning()
    battles: list[Battle] = []
    for battle in extra:
        cleaning.records += 1
        answers = " ".join(m.get("content") or "" for m in (*battle.conversation_a, *battle.conversation_b)
                           if m.get("role") == "assistant")
        if not keep_leaks and _leaks_identity(answers, (battle.model_a, battle.model_b)):
            cleaning.drop("identity revealed")
        else:
            battles.append(battle)
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl"))
        elif path.is_file():
            files.append(path)
        else:
            raise ParleyError(f"{path} does not exist")
    for file in files:
        for row in read_records(file):
            cleaning.records += 1
            if "winner" in row and "model_a" in row:
                try:
                    battle = Battle.model_validate(row)
                except ValidationError as exc:
                    raise ParleyError(f"{file}: not a battle: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
                battles.append(battle)
            elif row.get("type") in VOTE_TYPES:
                battle = battle_from_log(row, cleaning, check_identity=not keep_leaks)
                if battle:
                    battles.append(battle)
            else:
                cleaning.drop("not a vote")
    kept = []
    for battle in battles:
        if anony_only and not battle.anony:
            cleaning.drop("named (not anonymous) battle")
        elif battle.model_a == battle.model_b:
            cleaning.drop("a model against itself")
        else:
            kept.append(battle)
    kept.sort(key=lambda b: b.tstamp)
    cleaning.battles = len(kept)
    return kept, cleaning


def battle_counts(battles: Iterable[Battle]) -> Counter:
    counts: Counter = Counter()
    for b in battles:
        counts[b.model_a] += 1
        counts[b.model_b] += 1
    return counts
