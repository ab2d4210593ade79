// The JSON API of `parley web` (see /docs on the server): typed calls, the CSRF token, replies as events.

import { SseParser } from "./sse";

export type SignupPolicy = "closed" | "open" | "approval";

export interface Session {
  signed_in: boolean;
  username: string | null;
  is_admin: boolean;
  auth: boolean;
  csrf_token: string;
  user_id?: number | null;
  signup?: SignupPolicy; // who may make an account on the sign-in screen
  oidc?: { name: string } | null; // the OpenID Connect provider to sign in with, if one is set up
}

export interface SignupResult {
  status: "active" | "pending"; // pending: an admin approves it first (no session yet)
  session: Session;
}

/** What a key or a user may use; null: no limit. */
export interface Limits {
  rpm: number | null;
  tpm: number | null;
  token_budget: number | null;
  budget_period: "day" | "month" | null;
}

export interface UserView {
  id: number;
  username: string;
  is_admin: boolean;
  status: "active" | "pending" | "disabled";
  sign_in: "password" | "oidc" | "none";
  created_at: string;
  last_login_at: string | null;
  limits: Limits;
}

/** The signed-in user, with what they have used of their limits' current windows. */
export interface Account extends UserView {
  used?: { requests_this_minute: number; tokens_this_minute: number; tokens_this_period: number } | null;
}

export interface KeyView {
  id: string;
  name: string;
  prefix: string;
  user_id: number;
  owner: string;
  created_at: string;
  revoked_at: string | null;
  limits: Limits;
  models: string[] | null; // null: every model
}

export interface KeySpec extends Limits {
  name: string;
  models: string[] | null;
}

export interface NewKey {
  key: KeyView;
  secret: string; // shown once
}

export type UsageGroup = "user" | "key" | "model" | "day";

export interface UsageRow {
  user?: string | null;
  key?: string | null;
  key_id?: string | null;
  model?: string | null;
  day?: string | null;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  errors: number;
  mean_latency_ms: number;
}

export interface UsageQuery {
  by: UsageGroup[];
  since?: string; // YYYY-MM-DD (UTC), included
  until?: string;
  user_id?: number | null; // admins: one user's
}

export interface AccountChange {
  status?: UserView["status"];
  is_admin?: boolean;
  limits?: Limits;
}

export interface ModelEntry {
  name: string;
  description: string | null;
  link: string | null;
  label?: string; // what a picker shows, where it is not the name (an assistant: its name, the name its id)
}

export interface AssistantEntry {
  id: string;
  name: string;
  description: string;
  base_model: string;
  starters: string[];
  temperature: number | null;
  top_p: number | null;
  max_tokens: number | null;
  knowledge: string[];
  available: boolean;
}

/** What an assistant is made of (what create and update take). */
export interface AssistantSpec {
  name: string;
  description: string;
  base_model: string;
  system_prompt: string;
  temperature: number | null;
  top_p: number | null;
  max_tokens: number | null;
  starters: string[];
  shared: boolean;
  in_battles: boolean;
  collections: string[];
  top_k: number;
  min_score: number;
}

export interface Assistant extends AssistantSpec {
  id: string;
  owner: string;
  writable: boolean;
  collection_names: string[];
  created_at: string;
  updated_at: string;
}

export interface Collection {
  id: string;
  name: string;
  description: string;
  shared: boolean;
  owner: string;
  embedding_model: string;
  dimensions: number | null;
  documents: number;
  chunks: number;
  writable: boolean;
  created_at: string;
}

export interface KnowledgeDocument {
  id: number;
  collection_id: string;
  filename: string;
  media_type: string;
  size_bytes: number;
  pages: number | null;
  chunk_count: number;
  created_at: string;
}

/** A chunk of knowledge a reply was given, cited as [n]. */
export interface Source {
  n: number;
  filename: string;
  page: number | null;
  heading: string | null;
  text: string;
  score: number | null;
  document_id: number;
  collection_id: string;
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
  content: string; // a reply's answer
  reasoning?: string | null; // a reasoning model's thinking before its answer (null for other models)
  model: string | null;
  parameters: Parameters | null;
  created_at: string;
  finish_reason: string | null;
  error: string | null;
  completion_tokens: number | null;
  latency_s: number | null;
  versions: number[];
  sources?: Source[] | null;
}

export interface ConversationSummary {
  id: string;
  title: string;
  model: string | null;
  mode: string;
  created_at: string;
  updated_at: string;
  assistant_id?: string | null;
  assistant_name?: string | null;
}

export interface Conversation extends ConversationSummary {
  system_prompt: string | null;
  messages: Message[];
}

export type ReplyEvent =
  | { event: "started"; conversation: ConversationSummary; user_message: Message | null; reply: Message }
  | { event: "text"; text: string; reasoning?: string }
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
  | { event: "text"; side: number; data: { text: string; reasoning?: string } }
  | { event: "ended"; side: number; data: { reply: Message } }
  | { event: "turn"; can_vote: boolean; why_no_vote: string | null };

/** What an error says to the person at the screen (an ApiError's message is the server's). */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
    public code: string | null = null,
    public retryAfter: number | null = null, // seconds, from a 429's Retry-After
  ) {
    super(message);
  }
}

async function errorOf(res: Response): Promise<ApiError> {
  const wait = Number(res.headers.get("retry-after") ?? NaN);
  const retryAfter = Number.isFinite(wait) ? wait : null;
  try {
    const body = await res.json();
    return new ApiError(res.status, body?.error?.message ?? res.statusText, body?.error?.code ?? null, retryAfter);
  } catch {
    return new ApiError(res.status, `${res.status} ${res.statusText}`, null, retryAfter);
  }
}

/** The query string of a usage request (`format=csv`: the download's address). */
export function usageParams(q: UsageQuery, format?: "csv"): string {
  const params = new URLSearchParams({ by: q.by.join(",") });
  if (q.since) params.set("since", q.since);
  if (q.until) params.set("until", q.until);
  if (q.user_id != null) params.set("user_id", String(q.user_id));
  if (format) params.set("format", format);
  return params.toString();
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

  async signup(username: string, password: string): Promise<SignupResult> {
    const r = await this.call<SignupResult>("POST", "/signup", { username, password });
    if (r.session?.csrf_token) this.csrf = r.session.csrf_token;
    return r;
  }

  /** Where the "Sign in with …" button goes: the server redirects to the OpenID Connect provider. */
  oidcLoginUrl(): string {
    return "/api/oidc/login";
  }

  account(): Promise<Account> {
    return this.call("GET", "/account");
  }

  changePassword(current_password: string, new_password: string): Promise<void> {
    return this.call("POST", "/account/password", { current_password, new_password });
  }

  keys(): Promise<KeyView[]> {
    return this.call("GET", "/account/keys");
  }

  createKey(spec: KeySpec): Promise<NewKey> {
    return this.call("POST", "/account/keys", spec);
  }

  revokeKey(id: string): Promise<KeyView> {
    return this.call("DELETE", `/account/keys/${encodeURIComponent(id)}`);
  }

  usage(q: UsageQuery): Promise<UsageRow[]> {
    return this.call("GET", `/account/usage?${usageParams({ ...q, user_id: null })}`);
  }

  usageCsvUrl(q: UsageQuery): string {
    return `/api/account/usage?${usageParams({ ...q, user_id: null }, "csv")}`;
  }

  users(): Promise<UserView[]> {
    return this.call("GET", "/admin/users");
  }

  createUser(username: string, password: string, is_admin: boolean): Promise<UserView> {
    return this.call("POST", "/admin/users", { username, password, is_admin });
  }

  changeUser(id: number, change: AccountChange): Promise<UserView> {
    return this.call("PATCH", `/admin/users/${id}`, change);
  }

  resetPassword(id: number, password: string): Promise<void> {
    return this.call("POST", `/admin/users/${id}/password`, { password });
  }

  allKeys(): Promise<KeyView[]> {
    return this.call("GET", "/admin/keys");
  }

  adminRevokeKey(id: string): Promise<KeyView> {
    return this.call("DELETE", `/admin/keys/${encodeURIComponent(id)}`);
  }

  allUsage(q: UsageQuery): Promise<UsageRow[]> {
    return this.call("GET", `/admin/usage?${usageParams(q)}`);
  }

  allUsageCsvUrl(q: UsageQuery): string {
    return `/api/admin/usage?${usageParams(q, "csv")}`;
  }

  models(): Promise<{ models: ModelEntry[]; reachable: boolean; assistants: AssistantEntry[] }> {
    return this.call("GET", "/models");
  }

  assistants(): Promise<{ assistants: Assistant[] }> {
    return this.call("GET", "/assistants");
  }

  createAssistant(spec: AssistantSpec): Promise<Assistant> {
    return this.call("POST", "/assistants", spec);
  }

  updateAssistant(id: string, spec: AssistantSpec): Promise<Assistant> {
    return this.call("PUT", `/assistants/${encodeURIComponent(id)}`, spec);
  }

  duplicateAssistant(id: string): Promise<Assistant> {
    return this.call("POST", `/assistants/${encodeURIComponent(id)}/duplicate`);
  }

  deleteAssistant(id: string): Promise<void> {
    return this.call("DELETE", `/assistants/${encodeURIComponent(id)}`);
  }

  assistantExportUrl(id: string): string {
    return `/api/assistants/${encodeURIComponent(id)}/export`;
  }

  collections(): Promise<{ collections: Collection[] }> {
    return this.call("GET", "/collections");
  }

  createCollection(name: string, description: string, shared: boolean): Promise<Collection> {
    return this.call("POST", "/collections", { name, description, shared });
  }

  changeCollection(id: string, change: { name?: string; description?: string; shared?: boolean }): Promise<Collection> {
    return this.call("PATCH", `/collections/${encodeURIComponent(id)}`, change);
  }

  deleteCollection(id: string): Promise<void> {
    return this.call("DELETE", `/collections/${encodeURIComponent(id)}`);
  }

  documents(id: string): Promise<{ documents: KnowledgeDocument[] }> {
    return this.call("GET", `/collections/${encodeURIComponent(id)}/documents`);
  }

  deleteDocument(id: number): Promise<void> {
    return this.call("DELETE", `/documents/${id}`);
  }

  reindexCollection(id: string): Promise<Collection> {
    return this.call("POST", `/collections/${encodeURIComponent(id)}/reindex`, {});
  }

  searchCollection(id: string, query: string): Promise<{ sources: Source[] }> {
    return this.call("POST", `/collections/${encodeURIComponent(id)}/search`, { query });
  }

  /** Upload a file as the request's body; `progress(fraction)` while it is sent (then the server indexes it). */
  upload(id: string, file: File, progress: (fraction: number) => void): Promise<KnowledgeDocument> {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/api/collections/${encodeURIComponent(id)}/documents?filename=${encodeURIComponent(file.name)}`);
      xhr.setRequestHeader("X-CSRF-Token", this.csrf);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) progress(e.loaded / e.total);
      };
      xhr.onload = () => {
        let body: any = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          // not JSON: the status says what happened
        }
        if (xhr.status >= 200 && xhr.status < 300) resolve(body as KnowledgeDocument);
        else reject(new ApiError(xhr.status, body?.error?.message ?? `${xhr.status} ${xhr.statusText}`, body?.error?.code ?? null));
      };
      xhr.onerror = () => reject(new ApiError(0, "the upload failed: the server could not be reached"));
      xhr.send(file);
    });
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
