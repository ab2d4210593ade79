"""Documents to text: PDF (pypdf), DOCX (python-docx), HTML (Beautiful Soup), Markdown and plain text.

A document becomes sections, each with the page it is on (PDF) and the heading it sits under (DOCX, HTML,
Markdown), so that a chunk can say where it came from.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import PurePath

from parley.errors import ParleyError

MEDIA_TYPES = {
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".html": "text/html",
    ".htm": "text/html",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
}
SUPPORTED = ", ".join(sorted({k.lstrip(".") for k in MEDIA_TYPES}))


class DocumentError(ParleyError):
    """A file that cannot be read as a document (its type, or its contents)."""


@dataclass
class Section:
    text: str
    page: int | None = None
    heading: str | None = None


@dataclass
class ParsedDocument:
    media_type: str
    sections: list[Section] = field(default_factory=list)
    pages: int | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


def media_type(filename: str) -> str:
    suffix = PurePath(filename).suffix.lower()
    if suffix not in MEDIA_TYPES:
        raise DocumentError(f"{filename}: not a supported document type (supported: {SUPPORTED})")
    return MEDIA_TYPES[suffix]


def parse(filename: str, data: bytes) -> ParsedDocument:
    """The document's text, by its file name's extension. Raises DocumentError for what cannot be read."""
    kind = media_type(filename)
    try:
        if kind == "application/pdf":
            parsed = _pdf(data)
        elif kind.endswith("wordprocessingml.document"):
            parsed = _docx(data)
        elif kind == "text/html":
            parsed = _html(_decode(filename, data))
        elif kind == "text/markdown":
            parsed = _markdown(_decode(filename, data))
        else:
            parsed = ParsedDocument("text/plain", [Section(_decode(filename, data).strip())])
    except DocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - each parser has its own errors for a damaged file
        raise DocumentError(f"{filename}: cannot be read as {kind} ({type(exc).__name__}: {exc})") from None
    parsed.sections = [s for s in parsed.sections if s.text.strip()]
    if not parsed.sections:
        raise DocumentError(f"{filename}: no text found (a scanned PDF needs OCR first)")
    return parsed


def _decode(filename: str, data: bytes) -> str:
    for encoding in ("utf-8-sig", "utf-16"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\x00" not in text:
            return text
    raise DocumentError(f"{filename}: not UTF-8 text")


def _pdf(data: bytes) -> ParsedDocument:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    sections = [Section((page.extract_text() or "").strip(), page=i + 1) for i, page in enumerate(reader.pages)]
    return ParsedDocument("application/pdf", sections, pages=len(reader.pages))


def _docx(data: bytes) -> ParsedDocument:
    import docx

    document = docx.Document(io.BytesIO(data))
    sections: list[Section] = []
    heading: str | None = None
    lines: list[str] = []

    def close() -> None:
        if lines:
            sections.append(Section("\n".join(lines), heading=heading))
            lines.clear()

    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        if style.startswith("Heading") or style == "Title":
            close()
            heading = text
        lines.append(text)
    close()
    for table in document.tables:
        rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
        sections.append(Section("\n".join(rows), heading=heading))
    return ParsedDocument(MEDIA_TYPES[".docx"], sections)


HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
BLOCKS = ("p", "li", "pre", "blockquote", "td", "th", "dd", "dt", "figcaption", "caption")


def _html(text: str) -> ParsedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "template"]):
        tag.decompose()
    sections: list[Section] = []
    heading: str | None = soup.title.get_text(" ", strip=True) if soup.title else None
    lines: list[str] = []
    body = soup.body or soup
    for element in body.find_all([*HEADINGS, *BLOCKS]):
        if element.find_parent(BLOCKS) is not None:  # nested in a block already taken whole
            continue
        words = element.get_text(" ", strip=True)
        if not words:
            continue
        if element.name in HEADINGS:
            if lines:
                sections.append(Section("\n".join(lines), heading=heading))
                lines = []
            heading = words
        lines.append(words)
    if lines:
        sections.append(Section("\n".join(lines), heading=heading))
    if not sections:  # text outside any block element
        sections.append(Section(body.get_text(" ", strip=True), heading=heading))
    return ParsedDocument("text/html", sections)


ATX_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown(text: str) -> ParsedDocument:
    sections: list[Section] = []
    heading: str | None = None
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else ATX_HEADING.match(line)
        if match:
            if any(x.strip() for x in lines):
                sections.append(Section("\n".join(lines).strip(), heading=heading))
            lines = []
            heading = match.group(2)
        lines.append(line)
    if any(x.strip() for x in lines):
        sections.append(Section("\n".join(lines).strip(), heading=heading))
    return ParsedDocument("text/markdown", sections)
