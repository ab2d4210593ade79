"""The conversation held by `parley chat`: messages, edits, and saving to / loading from JSON."""

from __future__ import annotations

import json
from pathlib import Path

from parley.conversation.formatter import ChatMessage
from parley.errors import ParleyError

HELP = """commands:
  !!exit, exit        leave
  !!reset, clear      start a new conversation
  !!remove            drop the last exchange
  !!regen             regenerate the last reply
  !!save FILE         save the conversation as JSON
  !!load FILE         load a saved conversation
  help                this list
Ctrl-C while a reply streams stops that reply."""

SAVE_FORMAT = "parley.chat.v1"


class ChatSession:
    def __init__(self, system: str | None = None, keep_history: bool = True):
        self.system = system
        self.keep_history = keep_history
        self.turns: list[ChatMessage] = []  # alternating user / assistant

    def request_messages(self, user_text: str) -> list[dict]:
        """What to send for a new user message (the whole history, unless --no-history)."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        if self.keep_history:
            messages += [t.model_dump() for t in self.turns]
        return messages + [{"role": "user", "content": user_text}]

    def record(self, user_text: str, reply: str) -> None:
        self.turns.append(ChatMessage(role="user", content=user_text))
        self.turns.append(ChatMessage(role="assistant", content=reply if reply.strip() else "(no reply)"))

    def reset(self) -> None:
        self.turns.clear()

    def remove_last_exchange(self) -> bool:
        if not self.turns:
            return False
        del self.turns[-2:]
        return True

    def pop_last_exchange(self) -> str | None:
        """For !!regen: drop the last exchange and return its user message."""
        if not self.turns:
            return None
        user = self.turns[-2].content
        del self.turns[-2:]
        return user

    def save(self, path: str | Path, model: str) -> None:
        data = {
            "format": SAVE_FORMAT,
            "model": model,
            "system": self.system,
            "messages": [t.model_dump() for t in self.turns],
        }
        Path(path).expanduser().write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def load(self, path: str | Path) -> None:
        """Replace the conversation with a saved one; on any problem, keep the current one."""
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != SAVE_FORMAT:
                raise ValueError(f"not a saved parley chat (format {SAVE_FORMAT!r})")
            turns = [ChatMessage.model_validate(m) for m in data["messages"]]
            for i, t in enumerate(turns):
                if t.role != ("user" if i % 2 == 0 else "assistant"):
                    raise ValueError("messages must alternate user/assistant")
            if len(turns) % 2:
                raise ValueError("the last message must be the assistant's")
        except FileNotFoundError:
            raise ParleyError(f"no such file: {p}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ParleyError(f"cannot load {p}: {exc}") from None
        self.turns = turns
        self.system = data.get("system") or self.system
