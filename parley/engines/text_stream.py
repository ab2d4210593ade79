"""Turning a growing list of token ids into text deltas that are safe to show.

Two rules for every engine: a delta never ends inside a UTF-8 character (byte-level
tokenizers emit partial characters, which decode to U+FFFD until completed), and a delta
never shows text that might turn out to be the start of a stop string.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

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


def _common_prefix_length(a: str, b: str) -> int:
    """The length of the longest common prefix (a binary search over C-speed comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _StopAutomaton:
    """Aho-Corasick automaton over the characters of a request's stop strings.

    A state is a node of the trie of stop prefixes: the longest suffix of the text read so far
    that is a prefix of some stop. Stepping costs amortized O(1) a character (following failure
    links makes the state shallower, each character makes it at most one deeper), and building
    costs O(sum of stop lengths) time and memory.

    The trie lives in flat integer arrays, not a dict per node, so a long stop costs about 20
    bytes a character, and inserting the stops in sorted order adds each one's unshared tail
    with C-speed array operations. Each node keeps its first child (the child's character as a
    code point, and its id); further children, which only branching nodes have (at most one
    per stop), are in a dict per such node. The failure links, the slow part in Python, are
    made as the text gets deep enough to need them (`link_to`), shallow nodes first as in the
    usual breadth-first construction, so no push waits for links that the text cannot reach
    yet: a push of k characters links at most k nodes per stop.
    """

    def __init__(self, stops: Sequence[str]):
        first_ord = array("i", [-1])  # the character of node i's first child, or -1 for a leaf
        first_child = array("i", [0])
        depth = array("i", [0])
        match = array("i", [0])  # the length of the longest stop that ends the node's text, or 0
        more: dict[int, dict[int, int]] = {}
        tails: list[tuple[int, int, int]] = []  # (depth of its first node, of its last, first node id)
        path = array("i", [0])  # the nodes along the previous stop
        previous = ""
        for stop in sorted(stops):  # distinct and non-empty; a prefix sorts before its extensions
            shared = _common_prefix_length(previous, stop)  # < len(stop)
            branch, base, tail = path[shared], len(depth), array("i", map(ord, stop[shared:]))
            if first_ord[branch] < 0:
                first_ord[branch], first_child[branch] = tail[0], base
            else:
                more.setdefault(branch, {})[tail[0]] = base
            count = len(tail)
            first_ord.extend(tail[1:])
            first_ord.append(-1)
            first_child.extend(range(base + 1, base + count))
            first_child.append(0)
            depth.extend(range(shared + 1, len(stop) + 1))
            match.frombytes(bytes(match.itemsize * count))
            match[-1] = len(stop)
            tails.append((shared + 1, len(stop), base))
            del path[shared + 1:]
            path.extend(range(base, base + count))
            previous = stop
        self.first_ord, self.first_child, self.more = first_ord, first_child, more
        self.depth, self.match = depth, match
        self.fail = array("i", bytes(match.itemsize * len(depth)))  # the root's children fail to the root
        self._tails = sorted(tails)  # every node but the root lies in one tail
        self._next_tail = 0
        self._active: list[tuple[int, int, int]] = []  # the tails that reach the depth being linked
        self._linked = 1  # fail and match are final for every node this deep or shallower
        self._max_depth = max(map(len, stops))

    def link_to(self, limit: int) -> None:
        """Make `fail` and `match` final for every node of depth `limit` or less."""
        d, limit = self._linked, min(limit, self._max_depth)
        tails, active = self._tails, self._active
        while d < limit:  # link the children of the nodes at depth d
            while self._next_tail < len(tails) and tails[self._next_tail][0] <= d:
                active.append(tails[self._next_tail])
                self._next_tail += 1
            active[:] = [t for t in active if t[1] >= d]
            for first, _, base in active:
                self._link_children(base + d - first)
            d += 1
        self._linked = d

    def _link_children(self, node: int) -> None:
        first_ord, first_child, more, fail, match = self.first_ord, self.first_child, self.more, self.fail, self.match
        o = first_ord[node]
        if o < 0:
            return
        children = [(o, first_child[node])]
        if node in more:
            children.extend(more[node].items())
        for o, child in children:  # its fail: the longest proper suffix of its text that is a node
            f = fail[node]
            while True:
                if first_ord[f] == o:
                    target = first_child[f]
                    break
                extra = more.get(f)
                if extra is not None and o in extra:
                    target = extra[o]
                    break
                if not f:
                    target = 0
                    break
                f = fail[f]
            fail[child] = target
            if not match[child]:
                match[child] = match[target]

    def step(self, state: int, o: int) -> int:
        """The state after reading the character with code point `o` in `state` (whose fail
        chain must be linked)."""
        first_ord, more, fail = self.first_ord, self.more, self.fail
        while True:
            if first_ord[state] == o:
                return self.first_child[state]
            extra = more.get(state)
            if extra is not None:
                nxt = extra.get(o)
                if nxt is not None:
                    return nxt
            if not state:
                return 0
            state = fail[state]


class StopStringMatcher:
    """Hold back text that could be the beginning of a stop string; cut at the first stop.

    Linear in the text whatever the stops are: one Aho-Corasick automaton per request, its
    state kept across pushes. The text held back is exactly the longest suffix of the text so
    far that is a prefix of some stop (the state's depth). The first stop to end in the text
    wins (the longest one when several end at the same character): the text before its start
    is emitted and nothing after it.
    """

    def __init__(self, stops: Sequence[str]):
        unique = [s for s in dict.fromkeys(stops) if s]
        self._automaton = _StopAutomaton(unique) if unique else None
        self._state = 0
        self._held: deque[str] = deque()  # the text not yet emitted: the last depth(state) characters
        self.stopped = False

    def push(self, text: str) -> str:
        """Return the text that is now safe to emit. After a stop is found, nothing more."""
        if self.stopped:
            return ""
        automaton = self._automaton
        if automaton is None:
            return text
        state = self._state
        automaton.link_to(automaton.depth[state] + len(text))  # as deep as this text can go
        step, match, held = automaton.step, automaton.match, self._held
        for ch in text:
            state = step(state, ord(ch))
            held.append(ch)
            if match[state]:
                self.stopped = True
                before = "".join(islice(held, len(held) - match[state]))
                held.clear()
                return before
        self._state = state
        popleft = held.popleft
        return "".join([popleft() for _ in range(len(held) - automaton.depth[state])])

    def flush(self) -> str:
        out = "" if self.stopped else "".join(self._held)
        self._held.clear()
        self._state = 0
        return out
