import { describe, expect, it } from "vitest";
import { linkCitations } from "./citations";

const SOURCES = [
  { n: 1, filename: "kestrel.pdf", page: 3 },
  { n: 2, filename: 'notes "a".md', page: null },
];

describe("linkCitations", () => {
  it("links each marker to its source, titled with the document and page", () => {
    const html = linkCitations("<p>The limit is 0.4 mg/l [1], see also [2].</p>", SOURCES, 7);
    expect(html).toContain('<a href="#src-7-1" title="kestrel.pdf, page 3">[1]</a>');
    expect(html).toContain('<a href="#src-7-2" title="notes &quot;a&quot;.md">[2]</a>');
  });

  it("leaves numbers no source has, and code, as they are", () => {
    const html = linkCitations("<p>[3] and <code>a[1]</code></p><pre><code>x = y[2]</code></pre>", SOURCES, 7);
    expect(html).toBe("<p>[3] and <code>a[1]</code></p><pre><code>x = y[2]</code></pre>");
  });

  it("changes nothing without sources", () => {
    expect(linkCitations("<p>[1]</p>", [], 1)).toBe("<p>[1]</p>");
  });
});
