"""Reasoning apart from the answer: a reasoning model's thinking, read out of its streamed text.

Reasoning models (DeepSeek-R1, QwQ, Qwen3 and their fine-tunes) write their thinking first, between `<think>`
and `</think>`, then the answer. Their chat templates often open the block themselves (the generation prompt
ends with `<think>`), so the reply starts inside it. A `ReasoningSplitter` reads a reply as it streams and says,
for each piece, which text is reasoning and which is the answer; it holds back only what could still be the
start of a marker, so both stream as they come.

Which replies are read this way is the worker's `--reasoning-parser`: `think` (aliases `deepseek_r1`, `qwen3`),
`none`, or, by default, `think` for a model whose chat template writes `<think>` or whose name is a reasoning
model's, and `none` otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

START, END = "<think>", "</think>"
PARSERS = {"think": "think", "deepseek_r1": "think", "deepseek-r1": "think", "qwen3": "think", "none": "none"}
# Model names of reasoning models, for models whose template does not show it.
REASONING_MODEL_NAME = re.compile(r"deepseek-r1|(^|[-_/])r1([-_.]|$)|qwq|qwen3|thinking|reasoner", re.IGNORECASE)
# `reasoning_effort` as OpenAI takes it (what each engine does with it: README, "Reasoning models").
EFFORTS = ("none", "minimal", "low", "medium", "high")


def parser_name(asked: str | None, template: str | None, model_name: str | None) -> str:
    """The parser a worker uses: the one asked for, else `think` for a reasoning model's template or name."""
    if asked is not None:
        try:
            return PARSERS[asked.lower()]
        except KeyError:
            raise ValueError(f"unknown reasoning parser {asked!r}; choose one of {', '.join(sorted(PARSERS))}") from None
    if template and START in template:
        return "think"
    if model_name and REASONING_MODEL_NAME.search(model_name):
        return "think"
    return "none"


def starts_inside(prompt: str) -> bool:
    """Whether a rendered prompt opens the reasoning block itself, so that the reply starts inside it."""
    return prompt.rstrip().endswith(START)


def open_block(text: str) -> bool:
    """Whether `text` (an assistant's message that a reply continues) ends inside a reasoning block."""
    return text.rfind(START) > text.rfind(END)


def _held(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker` (held back until more comes)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


@dataclass
class Split:
    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """One reply's text, piece by piece, as reasoning and answer. Only the reply's first block is reasoning: a
    `<think>` later in the answer is the answer's text."""

    def __init__(self, inside: bool = False):
        self._state = "reasoning" if inside else "before"  # before | reasoning | answer
        self._buffer = ""
        self._reasoning_started = False
        self._answer_started = False  # the whitespace between `</think>` and the answer is dropped

    def feed(self, text: str) -> Split:
        self._buffer += text
        out = Split()
        while self._buffer:
            if self._state == "before":
                stripped = self._buffer.lstrip()
                if stripped.startswith(START):
                    self._buffer = stripped[len(START):]
                    self._state = "reasoning"
                elif START.startswith(stripped):
                    break  # all of it could still be the marker (or whitespace before it)
                else:
                    self._state = "answer"  # no reasoning in this reply
                    self._answer_started = True
            elif self._state == "reasoning":
                if not self._reasoning_started:  # the whitespace after `<think>` is dropped
                    self._buffer = self._buffer.lstrip()
                    if not self._buffer:
                        break
                    self._reasoning_started = True
                end = self._buffer.find(END)
                if end >= 0:
                    out.reasoning += self._buffer[:end]
                    self._buffer = self._buffer[end + len(END):]
                    self._state = "answer"
                    continue
                keep = _held(self._buffer, END)
                out.reasoning += self._buffer[:len(self._buffer) - keep]
                self._buffer = self._buffer[len(self._buffer) - keep:]
                break
            else:
                if not self._answer_started:
                    self._buffer = self._buffer.lstrip()
                    if not self._buffer:
                        break
                    self._answer_started = True
                out.content += self._buffer
                self._buffer = ""
        return out

    def finish(self) -> Split:
        """The reply ended: what was held back is what it is (an unfinished marker is text)."""
        rest, self._buffer = self._buffer, ""
        if self._state == "reasoning":
            return Split(reasoning=rest)
        if self._state == "before":
            return Split(content=rest)
        return Split(content=rest if self._answer_started else rest.lstrip())
