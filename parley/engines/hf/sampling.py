"""Per-request token choice inside a shared batch: each request keeps its own parameters and RNG."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from parley.engines.base import SamplingParams


class RequestSampler:
    """Chooses the next token for one request from its row of the batch's logits."""

    def __init__(self, params: SamplingParams, device: torch.device | str):
        self.greedy = params.greedy
        self._penalty = (
            RepetitionPenaltyLogitsProcessor(params.repetition_penalty) if params.repetition_penalty != 1.0 else None
        )
        self._warpers = LogitsProcessorList()
        self._generator: torch.Generator | None = None
        if not self.greedy:
            if params.temperature != 1.0:
                self._warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                self._warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                self._warpers.append(TopPLogitsWarper(params.top_p))
            self._generator = torch.Generator(device=device)
            if params.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(params.seed)

    @property
    def needs_row(self) -> bool:
        """False when the batch-wide argmax already is this request's choice."""
        return not self.greedy or self._penalty is not None

    def choose(self, row: torch.Tensor, history: list[int]) -> int:
        """`row`: this request's logits, shape [1, vocab]; `history`: prompt + generated ids."""
        scores = row.float()
        if self._penalty is not None:
            ids = torch.tensor([history], device=scores.device)
            scores = self._penalty(ids, scores)
        if self.greedy:
            return int(scores.argmax(-1))
        scores = self._warpers(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))
