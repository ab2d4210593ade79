"""Labels for supervised fine-tuning: train on what the assistant says, mask everything else.

For each assistant message the chat template renders the conversation up to it twice: with the
generation prompt (everything before the reply) and with the reply. The characters in between
are the reply and the template's end-of-turn marker; the tokens covering them get their ids as
labels, all others -100. Any chat template works, as long as a shorter conversation renders as
a prefix of a longer one (checked, with a clear error otherwise). Token spans come from the
fast tokenizer's character offsets on the full text, so tokenizing pieces apart cannot shift
them; a token that straddles the start of a reply is trained. Whatever follows the end-of-turn token inside the span (a newline) is not trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel

from parley.errors import ParleyError

IGNORE = -100
END_OF_TURN_TEXT = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


class MaskError(ParleyError):
    pass


class TrainingExample(BaseModel):
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


class MaskBuilder:
    def __init__(self, tokenizer, chat_template: str | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise MaskError("label masks need a fast tokenizer (character offsets)")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        vocab = tokenizer.get_vocab()
        self.end_of_turn_ids = {vocab[t] for t in END_OF_TURN_TEXT if t in vocab}
        if tokenizer.eos_token_id is not None:
            self.end_of_turn_ids.add(tokenizer.eos_token_id)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, chat_template=self.chat_template,
                                                  add_generation_prompt=add_generation_prompt)

    def build(self, messages: Sequence[dict], max_length: int | None = None) -> TrainingExample:
        text = self.render(messages, add_generation_prompt=False)
        spans = []  # character spans of assistant replies (with their end-of-turn marker)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[: i + 1], add_generation_prompt=False)
            if not text.startswith(before) or not text.startswith(through) or len(through) <= len(before):
                raise MaskError("the chat template does not render a conversation's beginning as a prefix of the "
                                "whole; its assistant turns cannot be located")
            spans.append((len(before), len(through)))
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
        bos = self.tokenizer.bos_token_id
        if getattr(self.tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
            ids, offsets = [bos, *ids], [(0, 0), *offsets]  # the template did not write it: add it once
        labels = [IGNORE] * len(ids)
        for start, end in spans:
            # Tokens overlapping the reply: a token that straddles the boundary (BPE merged the header's newline
            # with the reply's leading space) is trained, as transformers' assistant masks do.
            inside = [j for j, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
            ends = [j for j in inside if ids[j] in self.end_of_turn_ids]
            # The reply, through the last end-of-turn token of the span (not the newline after it).
            keep = [j for j in inside if not ends or j <= ends[-1]]
            for j in keep:
                labels[j] = ids[j]
        if max_length is not None and len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
        example = TrainingExample(input_ids=ids, labels=labels)
        if example.trained_tokens == 0:
            raise MaskError("no assistant tokens to train on" + (" within --max-length" if max_length else ""))
        return example


class Collator:
    """Pads a batch: input ids with the pad id, labels with -100, attention mask 0. Labels are never derived from
    pad ids (for SmolLM2 the pad id is the end-of-turn id, which must stay trained)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(b["input_ids"]) for b in batch)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
        attention = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            attention[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": attention}
