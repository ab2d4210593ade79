"""Turning a growing list of token ids into text deltas that are safe to show.

Two rules for every engine: a delta never ends inside a UTF-8 character (byte-level
tokenizers emit partial characters, which decode to U+FFFD until completed), and a delta
never shows text that might turn out to be the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Decode token by token, emitting only completed text.

    Decoding a window that starts a few tokens back (rather than each token alone) keeps
    tokenizers that merge spaces across token boundaries exact, without re-decoding the
    whole sequence at every step.
    """

    def __init__(self, decode: Decode):
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the window whose text was already emitted
        self._read_offset = 0  # end of that window

    def push(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Text still held back at the end of a stream (an incomplete character stays U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]


class StopStringMatcher:
    """Hold back text that could be the beginning of a stop string; cut at the first stop."""

    def __init__(self, stops: Sequence[str]):
        self._stops = [s for s in dict.fromkeys(stops) if s]
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Return the text that is now safe to emit. After a stop is found, nothing more."""
        if self.stopped:
            return ""
        buf = self._pending + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buf[:cut]
        hold = self._longest_stop_prefix_suffix(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _longest_stop_prefix_suffix(self, buf: str) -> int:
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
