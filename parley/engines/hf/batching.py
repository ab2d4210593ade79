"""Continuous batching for Hugging Face causal LMs.

One background thread owns the model. Each iteration it admits waiting requests (one
left-padded prefill for all of them), merges their KV caches into the running batch, and
runs one decode step for every running sequence. A request that arrives mid-decode joins
at the next step; a finished or cancelled one leaves the batch at once.

The running batch is a left-padded `DynamicCache` with a 2-D attention mask: every row
writes its next key/value at the same column, and padding columns are masked out. When
rows leave, columns that became padding for every row are trimmed.

A prefill the model fails on (out of memory on one long prompt, say) is retried one prompt
at a time, so only the prompt that fails ends, with `RequestFailedError`; the running batch
is untouched (merging into it is all or nothing) and goes on decoding.

transformers' own continuous batching (`generate_batch`) was measured first on this CPU
(see README "Engine throughput"): it reached about 3x the single-stream rate at 16
concurrent requests, below this scheduler, and it has no per-request seed or repetition
penalty, which requests here need.
"""

from __future__ import annotations

import logging

import torch
from transformers import DynamicCache

from parley.engines.base import RequestFailedError
from parley.engines.model_loop import ModelLoop
from parley.engines.sampling import PromptLogprobs, SequenceState, advance_rows

log = logging.getLogger(__name__)

# Prompts that ask for their log-probabilities keep the logits of every position: a prefill with some of them holds
# at most this many rows × positions of logits (at SmolLM2's 49,152 tokens, 2,048 × 49,152 × 4 bytes: 400 MB).
# A longer prompt is prefilled alone.
PROMPT_LOGITS_BUDGET = 2048


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """`t` with `n` zero columns before it along `dim` (its sequence dimension)."""
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class _Batch:
    """The running sequences with their left-padded KV cache and attention mask."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, seqs: list[SequenceState]):
        self.cache, self.mask, self.seqs = cache, mask, seqs

    def __len__(self) -> int:
        return len(self.seqs)

    def merge(self, other: _Batch) -> None:
        """Append `other`'s rows. All or nothing: when it fails (out of memory), this batch is unchanged."""
        width, other_width = self.mask.shape[1], other.mask.shape[1]
        mine, theirs = max(other_width - width, 0), max(width - other_width, 0)  # padding to add on the left
        merged = [(torch.cat([_pad_left(a.keys, mine, 2), _pad_left(b.keys, theirs, 2)], dim=0),
                   torch.cat([_pad_left(a.values, mine, 2), _pad_left(b.values, theirs, 2)], dim=0))
                  for a, b in zip(self.cache.layers, other.cache.layers)]
        mask = torch.cat([_pad_left(self.mask, mine, 1), _pad_left(other.mask, theirs, 1)], dim=0)
        for layer, (keys, values) in zip(self.cache.layers, merged):
            layer.keys, layer.values = keys, values
        self.mask = mask
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
        super().__init__()
        self._device = device
        self._model = model
        self._max_batch = max_batch_size
        self._max_prefill_tokens = max_prefill_tokens
        self._batch: _Batch | None = None
        self.start()

    def _running_context(self):
        return torch.inference_mode()

    def _after_failure(self) -> None:
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()  # give back what the failed step held (out of memory, most often)

    def running_count(self) -> int:
        batch = self._batch
        return len(batch) if batch is not None else 0

    def _take_running(self) -> list[SequenceState]:
        seqs = self._batch.seqs if self._batch else []
        self._batch = None
        return seqs

    def _admit(self) -> None:
        new = self._next_prefill()
        if not new:
            return
        if self._batch is not None:
            self.stats.joined_running_batch += len(new)
        prefilled: list[tuple[_Batch, torch.Tensor]] | None = None
        try:
            prefilled = [self._prefill(new)]
        except Exception as exc:
            if len(new) == 1:
                self._prefill_failed(new[0], exc)
                return
            log.warning("%s: a prefill of %d prompts failed (%s: %s); prefilling them one at a time",
                        self.thread_name, len(new), type(exc).__name__, exc)
        if prefilled is None:  # outside the handler, so the failed pass's tensors are freed first
            prefilled = self._prefill_one_by_one(new)
        for batch, logits in prefilled:
            self._join(batch, logits)

    def _next_prefill(self) -> list[SequenceState]:
        """The waiting requests to prefill together: as many as the batch and the token budget allow (and, when
        some ask for their prompt's log-probabilities, the logits budget: see `_prefill`)."""
        running = len(self._batch) if self._batch else 0
        new: list[SequenceState] = []
        budget = self._max_prefill_tokens
        longest_scored = 0  # the longest prompt whose every position's logits are kept
        while self._waiting and running + len(new) < self._max_batch:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            if new and len(seq.prompt_ids) > budget:
                break
            scored = max(longest_scored, len(seq.prompt_ids) if seq.prompt_logprobs is not None else 0)
            if new and scored and (len(new) + 1) * scored > PROMPT_LOGITS_BUDGET:
                break
            longest_scored = scored
            budget -= len(seq.prompt_ids)
            new.append(self._waiting.popleft())
        return new

    def _prefill_one_by_one(self, seqs: list[SequenceState]) -> list[tuple[_Batch, torch.Tensor]]:
        """After a failed prefill: each prompt alone, so that only the ones the model fails on end."""
        self._after_failure()
        prefilled = []
        for seq in seqs:
            try:
                prefilled.append(self._prefill([seq]))
            except Exception as exc:
                self._prefill_failed(seq, exc)
        return prefilled

    def _prefill_failed(self, seq: SequenceState, exc: Exception) -> None:
        log.error("%s: the model failed on a prompt of %d tokens: %s: %s",
                  self.thread_name, len(seq.prompt_ids), type(exc).__name__, exc)
        self._fail([seq], RequestFailedError("the model failed on this prompt", exc))

    def _join(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Choose the prefilled requests' first tokens and merge those that go on into the running batch."""
        seqs = list(batch.seqs)
        try:
            joined = self._advance(batch, logits)
            if joined is None:
                return
            if self._batch is None:
                self._batch = joined
            else:
                self._batch.merge(joined)
        except Exception as exc:  # the running batch is unchanged: only these requests end
            log.exception("%s: admitting %d prefilled requests failed", self.thread_name, len(seqs))
            self._fail(seqs, RequestFailedError("the engine failed to start this reply", exc))

    def _prefill(self, seqs: list[SequenceState]) -> tuple[_Batch, torch.Tensor]:
        """One left-padded forward pass over the prompts: their KV cache and last logits. When some ask for their
        prompt's log-probabilities, the logits of the last columns (as many as the longest of those prompts) are
        kept, for every row, and each of those requests gets its PromptLogprobs here, before its first token."""
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
        scored = max((len(s.prompt_ids) for s in seqs if s.prompt_logprobs is not None), default=0)
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                          use_cache=True, logits_to_keep=max(scored, 1))
        self.stats.prefill_batches += 1
        scored_rows = []  # every row's first, then sent: a pass that fails halfway is retried and sends nothing twice
        for row, seq in enumerate(seqs):
            if seq.prompt_logprobs is not None:
                n = len(seq.prompt_ids)  # its logits are the last n columns; all but the last predict a prompt token
                scored_rows.append((seq, PromptLogprobs.of(out.logits[row, scored - n: scored - 1, :],
                                                           seq.prompt_ids[1:], seq.prompt_logprobs)))
        for seq, scores in scored_rows:
            try:
                seq.emit(scores)
            except RuntimeError:  # the consumer's event loop is gone
                seq.cancelled = True
        return _Batch(out.past_key_values, mask, list(seqs)), out.logits[:, -1, :]

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
