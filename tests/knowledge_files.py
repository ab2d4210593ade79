"""Documents for the knowledge tests, made here: a PDF with pages (fpdf2), a DOCX with headings (python-docx),
HTML and Markdown. Each holds facts found nowhere else, so a test knows which page or section must be found."""

from __future__ import annotations

import io

# An invented project: its facts are in no model's training data.
PAGES = [
    "Project Kestrel Lake environmental impact assessment. This report covers the proposed water treatment "
    "works beside Kestrel Lake and its effects on wetlands, fish and the people living nearby.",
    "Noise survey. Night-time noise at the nearest house, Heron Cottage, was measured at 31 decibels before "
    "construction. Piling work will be limited to weekdays between 8 am and 6 pm.",
    "Water quality. The permitted phosphorus discharge limit for the treatment works is 0.4 milligrams per litre. "
    "Monitoring will take place every fortnight at three stations downstream of the outfall.",
]


def pdf_bytes(pages: list[str] = PAGES) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def docx_bytes() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Soil survey", level=1)
    document.add_paragraph("The topsoil at the Marrow Hill site is a sandy loam, 35 centimetres deep on average.")
    document.add_heading("Drainage", level=1)
    document.add_paragraph("Field drains will be replaced with a swale sized for a 1 in 100 year storm.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


HTML = """<!doctype html><html><head><title>Air quality note</title><style>p{color:red}</style></head><body>
<nav>Home | About</nav><h1>Air quality</h1><p>The annual mean nitrogen dioxide level at the Ashgrove school
monitor was 18 micrograms per cubic metre.</p><h2>Dust</h2><ul><li>Wheel washing at the site exit.</li></ul>
<script>alert(1)</script></body></html>"""

MARKDOWN = """# Ecology

Bat surveys found common pipistrelles roosting in the old mill.

## Mitigation

```
# not a heading: inside a code fence
```

Two bat boxes will be fixed to each retained oak tree.
"""
