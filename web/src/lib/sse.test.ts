import { describe, expect, it } from "vitest";
import { SseParser } from "./sse";

describe("SseParser", () => {
  it("joins events split across chunks anywhere", () => {
    const text = 'event: started\ndata: {"a":1}\n\nevent: text\ndata: {"text":"hé"}\n\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new SseParser();
      const events = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut))];
      expect(events).toEqual([
        { event: "started", data: '{"a":1}' },
        { event: "text", data: '{"text":"hé"}' },
      ]);
    }
  });

  it("keeps an unfinished event until its blank line, and skips comments", () => {
    const p = new SseParser();
    expect(p.push(": keep-alive\n\ndata: 1\n")).toEqual([]);
    expect(p.push("data: 2\r\n\r\n")).toEqual([{ event: "message", data: "1\n2" }]);
  });
});
