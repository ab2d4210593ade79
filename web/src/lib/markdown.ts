// Replies as markdown: sanitized HTML, code highlighted, with a copy button on each code block.

import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/common";
import { Marked, type Tokens } from "marked";

function escape(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    code({ text, lang }: Tokens.Code): string {
      const language = lang && hljs.getLanguage(lang) ? lang : null;
      const html = language ? hljs.highlight(text, { language }).value : escape(text);
      const label = language ?? "text";
      return `<div class="code-block"><div class="code-head"><span>${escape(label)}</span>` +
        `<button type="button" class="copy" data-copy>Copy</button></div>` +
        `<pre><code class="hljs">${html}</code></pre></div>`;
    },
  },
});

// LaTeX between $…$ (inline) and $$…$$ (display), rendered by KaTeX, which is loaded the first time a reply has
// a formula (it is most of the app's size otherwise); a formula that does not parse stays as its source.
let math: Promise<void> | null = null;

export function hasMath(text: string): boolean {
  return /\$[^$\n]+\$/.test(text);
}

export function loadMath(): Promise<void> {
  math ??= Promise.all([import("marked-katex-extension"), import("katex/dist/katex.min.css")]).then(([ext]) => {
    marked.use(ext.default({ throwOnError: false, nonStandard: true }));
  });
  return math;
}

/** `_mathReady` only makes a reactive caller render again once KaTeX has loaded. */
export function renderMarkdown(text: string, _mathReady = false): string {
  return DOMPurify.sanitize(marked.parse(text, { async: false }) as string);
}
