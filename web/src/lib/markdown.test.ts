// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { hasMath, loadMath, renderMarkdown } from "./markdown";

describe("renderMarkdown", () => {
  it("renders LaTeX with KaTeX once loaded, and code highlighted with a copy button", async () => {
    expect(hasMath("The area is $\\pi r^2$.")).toBe(true);
    expect(hasMath("It costs $5, or $6 with tax")).toBe(true); // loading KaTeX is harmless where it is not math
    expect(hasMath("plain text")).toBe(false);
    await loadMath();
    const html = renderMarkdown("The area is $\\pi r^2$.\n\n$$E = mc^2$$\n\n```python\nprint('hi')\n```");
    expect(html).toContain('class="katex"');
    expect(html).toContain('class="katex-display"');
    expect(html).toContain('class="copy"');
    expect(html).toContain('<span class="hljs-built_in">print</span>');
  });

  it("never lets a reply run script", () => {
    const html = renderMarkdown('<script>alert(1)</script><img src=x onerror="alert(2)">\n\n[a](javascript:alert(3))');
    expect(html).toContain("<a>a</a>"); // the link stays, without its script
    expect(html).not.toMatch(/<script|onerror|javascript:/);
  });

  it("keeps a formula that does not parse as its source", async () => {
    await loadMath();
    expect(renderMarkdown("$\\frac{1}{$")).toContain("\\frac{1}{");
  });
});
