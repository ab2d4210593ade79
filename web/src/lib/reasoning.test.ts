import { describe, expect, it } from "vitest";
import { grow, isThinking } from "./reasoning";

describe("grow", () => {
  it("keeps the reasoning apart from the answer as the events come", () => {
    const reply: { content: string; reasoning?: string | null } = { content: "", reasoning: null };
    grow(reply, { text: "", reasoning: "Paris is " });
    grow(reply, { text: "", reasoning: "the capital." });
    grow(reply, { text: "Paris", reasoning: "" });
    grow(reply, { text: "." });
    expect(reply).toEqual({ content: "Paris.", reasoning: "Paris is the capital." });
  });

  it("leaves a reply without reasoning without it", () => {
    const reply: { content: string; reasoning?: string | null } = { content: "Hi" };
    grow(reply, { text: " there", reasoning: "" });
    expect(reply).toEqual({ content: "Hi there" });
  });
});

describe("isThinking", () => {
  it("holds while a streaming reply has reasoned and not yet answered", () => {
    expect(isThinking({ content: "", reasoning: "hmm" }, true)).toBe(true);
    expect(isThinking({ content: "A", reasoning: "hmm" }, true)).toBe(false);
    expect(isThinking({ content: "", reasoning: "hmm" }, false)).toBe(false); // stopped while thinking
    expect(isThinking({ content: "", reasoning: null }, true)).toBe(false);
  });
});
