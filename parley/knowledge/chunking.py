"""Splitting documents into chunks by tokens, with overlap, each chunk keeping its page and heading.

Tokens are the bundled embedding model's (all-MiniLM-L6-v2's WordPiece, through the `tokenizers` library), the
unit its 256-token input window is counted in; without that model installed, the same BERT pre-tokenizer's
words and punctuation. A chunk's text is a slice of the document's own text (offsets), never re-joined tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from parley.knowledge.parsing import Section

CHUNK_TOKENS = 200
OVERLAP_TOKENS = 40


@dataclass
class TextChunk:
    text: str
    page: int | None
    heading: str | None
    token_count: int


@functools.cache
def _tokenizer():
    from tokenizers import Tokenizer

    try:
        from parley.models.bundled import bundled_embedding_dir

        tokenizer = Tokenizer.from_file(str(bundled_embedding_dir() / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer
    except Exception:  # noqa: BLE001 - the bundled model is optional: count BERT pre-tokenizer pieces instead
        return None


def token_spans(text: str) -> list[tuple[int, int]]:
    """Each token's (start, end) character offsets in `text`."""
    tokenizer = _tokenizer()
    if tokenizer is not None:
        return [span for span in tokenizer.encode(text, add_special_tokens=False).offsets if span[1] > span[0]]
    from tokenizers.pre_tokenizers import BertPreTokenizer

    return [span for _, span in BertPreTokenizer().pre_tokenize_str(text)]


def chunk_sections(sections: list[Section], size: int = CHUNK_TOKENS, overlap: int = OVERLAP_TOKENS) -> list[TextChunk]:
    """Chunks of at most `size` tokens. A long section is cut into windows that share `overlap` tokens; short
    sections on one page are packed together (under the first one's heading)."""
    if not 0 <= overlap < size:
        raise ValueError("the overlap must be smaller than the chunk size")
    chunks: list[TextChunk] = []
    packed: list[tuple[Section, int]] = []

    def flush() -> None:
        if packed:
            first = packed[0][0]
            chunks.append(TextChunk("\n\n".join(s.text.strip() for s, _ in packed), first.page, first.heading,
                                    sum(n for _, n in packed)))
            packed.clear()

    for section in sections:
        text = section.text.strip()
        spans = token_spans(text)
        if not spans:
            continue
        if len(spans) > size:
            flush()
            step = size - overlap
            for start in range(0, len(spans), step):
                window = spans[start:start + size]
                chunks.append(TextChunk(text[window[0][0]:window[-1][1]], section.page, section.heading, len(window)))
                if start + size >= len(spans):
                    break
            continue
        if packed and (packed[0][0].page != section.page or sum(n for _, n in packed) + len(spans) > size):
            flush()
        packed.append((Section(text, section.page, section.heading), len(spans)))
    flush()
    return chunks
