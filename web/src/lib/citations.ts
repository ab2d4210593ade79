// A reply's [n] markers, linked to the sources it was given (an assistant's knowledge).

export interface Cited {
  n: number;
  filename: string;
  page: number | null;
}

const MARKER = /\[(\d{1,2})\]/g;

/** The reply's rendered HTML with each [n] that names one of `sources` made a link to it (`#src-{id}-{n}`), titled
 * with the document and page. Markers inside code, and numbers no source has, stay as they are. */
export function linkCitations(html: string, sources: Cited[], replyId: number): string {
  if (!sources.length) return html;
  const escape = (s: string) => s.replace(/[&"<>]/g, (c) => ({ "&": "&amp;", '"': "&quot;", "<": "&lt;", ">": "&gt;" })[c]!);
  // split into tags and text; text inside <code> or <pre> is left alone
  let inCode = 0;
  return html.split(/(<[^>]+>)/).map((part) => {
    if (part.startsWith("<")) {
      if (/^<(code|pre)\b/i.test(part)) inCode++;
      else if (/^<\/(code|pre)>/i.test(part)) inCode = Math.max(0, inCode - 1);
      return part;
    }
    if (inCode) return part;
    return part.replace(MARKER, (whole, n) => {
      const s = sources.find((x) => x.n === Number(n));
      if (!s) return whole;
      const title = escape(`${s.filename}${s.page ? `, page ${s.page}` : ""}`);
      return `<sup class="cite"><a href="#src-${replyId}-${s.n}" title="${title}">[${s.n}]</a></sup>`;
    });
  }).join("");
}
