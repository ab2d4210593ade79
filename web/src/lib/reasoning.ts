// A reasoning model's thinking, apart from its answer: how a streamed reply grows, and when it is still thinking.

export interface Growing {
  content: string; // the answer
  reasoning?: string | null;
}

/** Append what a reply's `text` event gained: its answer's text and its reasoning (either may be empty). */
export function grow(reply: Growing, gained: { text: string; reasoning?: string }): void {
  if (gained.reasoning) reply.reasoning = (reply.reasoning ?? "") + gained.reasoning;
  reply.content += gained.text;
}

/** Whether the reply's reasoning is still being written: it streams, it has reasoned, and its answer has not begun. */
export function isThinking(reply: Growing, streaming: boolean): boolean {
  return streaming && !!reply.reasoning && !reply.content;
}
