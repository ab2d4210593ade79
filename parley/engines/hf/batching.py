"""Continuous batching for Hugging Face causal LMs.

One background thread owns the model. Each iteration it admits waiting requests (one
left-padded prefill for all of them), merges their KV caches into the running batch, and
runs one decode step for every running sequence. A request that arrives mid-decode joins
at the next step; a finished or cancelled one leaves the batch at once.

The running batch is a left-padded `DynamicCache` with a 2-D attention mask: every row
writes its next key/value at the same column, and padding columns are masked out. When
rows leave, columns that became padding for every row are trimmed.

transformers' own continuous batching (`generate_batch`) was measured first on this CPU
(see README "Engine throughput"): it reached about 3x the single-stream rate at 16
concurrent requests, below this scheduler, and it has no per-request seed or repetition
penalty, which requests here need.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from parley.engines.model_loop import ModelLoop
from parley.engines.sampling import SequenceState, advance_rows


class _Batch:
    """The running sequences with their left-padded KV cache and attention mask."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, seqs: list[SequenceState]):
        self.cache, self.mask, self.seqs = cache, mask, seqs

    def __len__(self) -> int:
        return len(self.seqs)

    def _pad_left(self, n: int) -> None:
        if n <= 0:
            return
        for layer in self.cache.layers:
            k, v = layer.keys, layer.values
            layer.keys = torch.cat([k.new_zeros(k.shape[0], k.shape[1], n, k.shape[3]), k], dim=2)
            layer.values = torch.cat([v.new_zeros(v.shape[0], v.shape[1], n, v.shape[3]), v], dim=2)
        self.mask = torch.cat([self.mask.new_zeros(self.mask.shape[0], n), self.mask], dim=1)

    def merge(self, other: _Batch) -> None:
        width, other_width = self.mask.shape[1], other.mask.shape[1]
        self._pad_left(other_width - width)
        other._pad_left(width - other_width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self.mask = torch.cat([self.mask, other.mask], dim=0)
        self.seqs.extend(other.seqs)

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.mask.device)
        used = self.mask[index].sum(0) > 0
        start = int(used.nonzero()[0]) if bool(used.any()) else self.mask.shape[1]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.mask = self.mask.index_select(0, index)[:, start:]
        self.seqs = [self.seqs[i] for i in rows]


class ContinuousBatcher(ModelLoop):
    thread_name = "parley-batcher"

    def __init__(self, model, device: str, max_batch_size: int = 32, max_prefill_tokens: int = 8192):
        super().__init__(device)
        self._model = model
        self._max_batch = max_batch_size
        self._max_prefill_tokens = max_prefill_tokens
        self._batch: _Batch | None = None
        self.start()

    def running_count(self) -> int:
        batch = self._batch
        return len(batch) if batch is not None else 0

    def _take_running(self) -> list[SequenceState]:
        seqs = self._batch.seqs if self._batch else []
        self._batch = None
        return seqs

    def _admit(self) -> None:
        running = len(self._batch) if self._batch else 0
        new: list[SequenceState] = []
        budget = self._max_prefill_tokens
        while self._waiting and running + len(new) < self._max_batch:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            if new and len(seq.prompt_ids) > budget:
                break
            budget -= len(seq.prompt_ids)
            new.append(self._waiting.popleft())
        if not new:
            return
        if running:
            self.stats.joined_running_batch += len(new)
        batch = self._prefill(new)
        if batch is None:
            return
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.merge(batch)

    def _prefill(self, seqs: list[SequenceState]) -> _Batch | None:
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            n = len(seq.prompt_ids)
            ids[row, width - n :] = torch.tensor(seq.prompt_ids)
            mask[row, width - n :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._model.config)
        out = self._model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        self.stats.prefill_batches += 1
        batch = _Batch(out.past_key_values, mask, seqs)
        return self._advance(batch, out.logits[:, -1, :])

    def _step(self) -> None:
        batch = self._batch
        assert batch is not None
        live = [i for i, s in enumerate(batch.seqs) if not s.cancelled]
        if len(live) < len(batch):
            if not live:
                self._batch = None
                return
            batch.keep(live)
        last = torch.tensor([[s.generated[-1]] for s in batch.seqs], device=batch.mask.device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
        positions = batch.mask.sum(1, keepdim=True) - 1
        out = self._model(
            input_ids=last, attention_mask=batch.mask, position_ids=positions, past_key_values=batch.cache, use_cache=True
        )
        self.stats.decode_steps += 1
        self.stats.decode_tokens += len(batch)
        self.stats.max_batch_size_seen = max(self.stats.max_batch_size_seen, len(batch))
        self._batch = self._advance(batch, out.logits[:, -1, :])

    def _advance(self, batch: _Batch, logits: torch.Tensor) -> _Batch | None:
        """Choose each row's next token, emit it, and drop the rows that finished."""
        keep = advance_rows(batch.seqs, logits, self._finished_one)
        if not keep:
            return None
        if len(keep) < len(batch):
            batch.keep(keep)
        return batch
