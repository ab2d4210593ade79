"""From sampled tokens to `GenerationChunk`s: text deltas, stop strings, finish reason, usage.

Every engine feeds its tokens through one `OutputAssembler`, so streaming behaves the same
whatever does the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley.engines.base import FinishReason, GenerationChunk, Usage
from parley.engines.text_stream import Decode, IncrementalDetokenizer, StopStringMatcher


class OutputAssembler:
    def __init__(self, decode: Decode, stop: Sequence[str], prompt_tokens: int):
        self._detok = IncrementalDetokenizer(decode)
        self._stops = StopStringMatcher(stop)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, token_ids: Sequence[int], finish: FinishReason | None = None, hidden_last: bool = False) -> GenerationChunk | None:
        """Add sampled tokens. `finish` is the backend's verdict for this step (stop token or length);
        `hidden_last` marks a last token that ends generation and is not shown (EOS, a stop token id).
        Returns the chunk to emit, or None when there is nothing to show yet."""
        if self.finished:
            return None
        self.completion_tokens += len(token_ids)
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
            return GenerationChunk(text=text, token_ids=list(token_ids)) if text or token_ids else None
        self.finish_reason = finish
        return GenerationChunk(
            text=text,
            token_ids=list(token_ids),
            finish_reason=finish,
            usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens),
        )
