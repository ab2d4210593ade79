"""From sampled tokens to `GenerationChunk`s: text deltas, stop strings, finish reason, usage.

Every engine feeds its tokens through one `OutputAssembler`, so streaming behaves the same
whatever does the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley.engines.base import FinishReason, GenerationChunk, TokenLogprob, Usage
from parley.engines.text_stream import Decode, IncrementalDetokenizer, StopStringMatcher


class OutputAssembler:
    """`all_logprobs`: a hidden last token (EOS, a stop token id) keeps its log-probability entry though its text is
    not shown: with the prompt's log-probabilities, the entries are one per token, prompt and generated, as
    lm-evaluation-harness counts them (it drops the last, the generated token's)."""

    def __init__(self, decode: Decode, stop: Sequence[str], prompt_tokens: int, all_logprobs: bool = False):
        self._all_logprobs = all_logprobs
        self._detok = IncrementalDetokenizer(decode)
        self._stops = StopStringMatcher(stop)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self._logprobs: list[TokenLogprob] = []  # not yet sent with a chunk

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push_prompt_logprobs(self, entries: Sequence[TokenLogprob]) -> None:
        """The prompt's log-probabilities (GenerationRequest.prompt_logprobs): they go out with the first chunk,
        before the generated tokens'."""
        self._logprobs[:0] = entries

    def push(self, token_ids: Sequence[int], finish: FinishReason | None = None, hidden_last: bool = False,
             logprobs: Sequence[TokenLogprob] | None = None) -> GenerationChunk | None:
        """Add sampled tokens. `finish` is the backend's verdict for this step (stop token or length);
        `hidden_last` marks a last token that ends generation and is not shown (EOS, a stop token id);
        `logprobs`, when asked for, has one entry per token.
        Returns the chunk to emit, or None when there is nothing to show yet."""
        if self.finished:
            return None
        self.completion_tokens += len(token_ids)
        if logprobs:
            self._logprobs.extend(logprobs[:-1] if hidden_last and not self._all_logprobs else logprobs)
        visible = token_ids[:-1] if hidden_last else token_ids
        text = self._stops.push(self._detok.push(visible))
        if self._stops.stopped:
            finish = "stop"
        elif finish is not None:
            text += self._stops.push(self._detok.flush())
            text += self._stops.flush()
            if self._stops.stopped:
                finish = "stop"
        if finish is None:
            return GenerationChunk(text=text, token_ids=list(token_ids), logprobs=self._take_logprobs()) if text or token_ids else None
        self.finish_reason = finish
        return GenerationChunk(
            text=text,
            token_ids=list(token_ids),
            logprobs=self._take_logprobs(),
            finish_reason=finish,
            usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens),
        )

    def _take_logprobs(self) -> list[TokenLogprob] | None:
        taken, self._logprobs = self._logprobs, []
        return taken or None
