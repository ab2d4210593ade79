// The JSON API of `parley web` (see /docs on the server): typed calls, the CSRF token, replies as events.

import { SseParser } from "./sse";

export interface Session {
  signed_in: boolean;
  username: string | null;
  is_admin: boolean;
  auth: boolean;
  csrf_token: string;
}

export interface ModelEntry {
  name: string;
  description: string | null;
  link: string | null;
}

export interface Parameters {
  temperature: number;
  top_p: number;
  max_tokens: number;
}

export interface Message {
  id: number;
  position: number;
  role: "system" | "user" | "assistant";
  content: string;
  model: string | null;
  parameters: Parameters | null;
  created_at: string;
  finish_reason: string | null;
  error: string | null;
  completion_tokens: number | null;
  latency_s: number | null;
  versions: number[];
}

export interface ConversationSummary {
  id: string;
  title: string;
  model: string | null;
  mode: string;
  created_at: string;
  updated_at: string;
}

export interface Conversation extends ConversationSummary {
  system_prompt: string | null;
  messages: Message[];
}

export type ReplyEvent =
  | { event: "started"; conversation: ConversationSummary; user_message: Message | null; reply: Message }
  | { event: "text"; text: string }
  | { event: "ended"; reply: Message };

export interface BattleSide {
  label: string;
  model: string | null; // null in an anonymous battle until the vote
  conversation_id: string;
  messages: Message[];
}

export interface Battle {
  id: string;
  anonymous: boolean;
  vote: string | null;
  why_no_vote: string | null;
  sides: BattleSide[];
}

export interface LeaderboardRow {
  rank: number | null;
  model: string;
  rating: number | null;
  lower: number | null;
  upper: number | null;
  votes: number;
  mt_bench: number | null;
}

export interface Leaderboard {
  status: string;
  rows: LeaderboardRow[];
  not_counted: Record<string, number>;
  mt_bench: { categories: string[]; scores: Record<string, Record<string, number>> } | null;
  can_recompute: boolean;
}

type Started = { conversation: ConversationSummary; user_message: Message | null; reply: Message };
export type ArenaEvent =
  | { event: "started"; side: number; data: Started }
  | { event: "text"; side: number; data: { text: string } }
  | { event: "ended"; side: number; data: { reply: Message } }
  | { event: "turn"; can_vote: boolean; why_no_vote: string | null };

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    public code: string | null = null,
  ) {
    super(message);
  }
}

async function errorOf(res: Response): Promise<ApiError> {
  try {
    const body = await res.json();
    return new ApiError(res.status, body?.error?.message ?? res.statusText, body?.error?.code ?? null);
  } catch {
    return new ApiError(res.status, `${res.status} ${res.statusText}`);
  }
}

export function isAbort(e: unknown): boolean {
  return e instanceof DOMException && e.name === "AbortError";
}

export class Api {
  csrf = "";
  private streams = new Set<AbortController>();

  /** Stop listening to every reply stream of this page (the replies go on being written on the server). */
  abortStreams(): void {
    for (const controller of this.streams) controller.abort();
    this.streams.clear();
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await fetch(`/api${path}`, this.init(method, body));
    if (!res.ok) throw await errorOf(res);
    return (res.status === 204 ? undefined : await res.json()) as T;
  }

  private init(method: string, body?: unknown, signal?: AbortSignal): RequestInit {
    const headers: Record<string, string> = { "X-CSRF-Token": this.csrf };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      signal,
    };
  }

  async session(): Promise<Session> {
    const s = await this.call<Session>("GET", "/session");
    this.csrf = s.csrf_token;
    return s;
  }

  async login(username: string, password: string): Promise<Session> {
    const s = await this.call<Session>("POST", "/login", { username, password });
    this.csrf = s.csrf_token;
    return s;
  }

  async logout(): Promise<Session> {
    const s = await this.call<Session>("POST", "/logout");
    this.csrf = s.csrf_token;
    return s;
  }

  models(): Promise<{ models: ModelEntry[]; reachable: boolean }> {
    return this.call("GET", "/models");
  }

  conversations(q = ""): Promise<{ conversations: ConversationSummary[] }> {
    return this.call("GET", `/conversations${q ? `?q=${encodeURIComponent(q)}` : ""}`);
  }

  conversation(id: string): Promise<Conversation> {
    return this.call("GET", `/conversations/${encodeURIComponent(id)}`);
  }

  create(model: string | null, system_prompt: string | null): Promise<ConversationSummary> {
    return this.call("POST", "/conversations", { model, system_prompt });
  }

  change(id: string, change: { title?: string; system_prompt?: string; model?: string }): Promise<Conversation> {
    return this.call("PATCH", `/conversations/${encodeURIComponent(id)}`, change);
  }

  remove(id: string): Promise<void> {
    return this.call("DELETE", `/conversations/${encodeURIComponent(id)}`);
  }

  stop(id: string): Promise<{ stopped: boolean }> {
    return this.call("POST", `/conversations/${encodeURIComponent(id)}/stop`);
  }

  exportUrl(id: string, format: "json" | "markdown"): string {
    return `/api/conversations/${encodeURIComponent(id)}/export?format=${format}`;
  }

  send(id: string, content: string, model: string, parameters: Parameters): AsyncGenerator<ReplyEvent> {
    return this.events("POST", `/conversations/${encodeURIComponent(id)}/messages`, { content, model, parameters });
  }

  regenerate(id: string, model: string, parameters: Parameters): AsyncGenerator<ReplyEvent> {
    return this.events("POST", `/conversations/${encodeURIComponent(id)}/regenerate`, { model, parameters });
  }

  edit(id: string, messageId: number, content: string, model: string, parameters: Parameters): AsyncGenerator<ReplyEvent> {
    return this.events("POST", `/conversations/${encodeURIComponent(id)}/messages/${messageId}/edit`,
      { content, model, parameters });
  }

  feedback(id: string, messageId: number, kind: "upvote" | "downvote" | "flag"): Promise<{ id: number }> {
    return this.call("POST", `/conversations/${encodeURIComponent(id)}/messages/${messageId}/feedback`, { kind });
  }

  switchTo(id: string, messageId: number): Promise<Conversation> {
    return this.call("POST", `/conversations/${encodeURIComponent(id)}/switch`, { message_id: messageId });
  }

  continueReply(id: string, model: string, parameters: Parameters): AsyncGenerator<ReplyEvent> {
    return this.events("POST", `/conversations/${encodeURIComponent(id)}/continue`, { model, parameters });
  }

  follow(id: string): AsyncGenerator<ReplyEvent> {
    return this.events("GET", `/conversations/${encodeURIComponent(id)}/reply`);
  }

  leaderboard(): Promise<Leaderboard> {
    return this.call("GET", "/leaderboard");
  }

  recomputeLeaderboard(): Promise<Leaderboard> {
    return this.call("POST", "/leaderboard/recompute");
  }

  newBattle(models: string[] | null): Promise<Battle> {
    return this.call("POST", "/arena/battles", { models });
  }

  arenaSend(id: string, content: string, parameters: Parameters): AsyncGenerator<ArenaEvent> {
    return this.events<ArenaEvent>("POST", `/arena/battles/${encodeURIComponent(id)}/messages`, { content, parameters });
  }

  arenaStop(id: string): Promise<{ stopped: boolean }> {
    return this.call("POST", `/arena/battles/${encodeURIComponent(id)}/stop`);
  }

  vote(id: string, kind: string): Promise<Battle> {
    return this.call("POST", `/arena/battles/${encodeURIComponent(id)}/vote`, { kind });
  }

  private async *events<E = ReplyEvent>(method: string, path: string, body?: unknown): AsyncGenerator<E> {
    const controller = new AbortController();
    this.streams.add(controller);
    try {
      const res = await fetch(`/api${path}`, this.init(method, body, controller.signal));
      if (!res.ok || !res.body) throw await errorOf(res);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        for (const e of parser.push(value)) {
          if (controller.signal.aborted) return;
          yield { event: e.event, ...JSON.parse(e.data) } as E;
        }
      }
    } finally {
      this.streams.delete(controller);
    }
  }
}
