// What the Account and Admin pages say about limits and times, and how their limit fields read.

import type { Limits } from "./api";
import { parseTime } from "./dates";

/** "60 requests/min · 10000 tokens/min · 1000000 tokens/month", or "no limits". */
export function describeLimits(l: Limits | null | undefined): string {
  if (!l) return "no limits";
  const parts = [
    l.rpm ? `${l.rpm.toLocaleString("en")} requests/min` : "",
    l.tpm ? `${l.tpm.toLocaleString("en")} tokens/min` : "",
    l.token_budget ? `${l.token_budget.toLocaleString("en")} tokens/${l.budget_period ?? "month"}` : "",
  ].filter(Boolean);
  return parts.join(" · ") || "no limits";
}

/** How much of each set limit is used now ("2 of 30 requests this minute; …"), or "" with no limits. The
 * server counts only what a limit reads, so a limit not set has nothing to show. */
export function usedText(l: Limits,
                         used: { requests_this_minute: number; tokens_this_minute: number; tokens_this_period: number }):
  string {
  const n = (v: number) => v.toLocaleString("en");
  return [
    l.rpm ? `${n(used.requests_this_minute)} of ${n(l.rpm)} requests this minute` : "",
    l.tpm ? `${n(used.tokens_this_minute)} of ${n(l.tpm)} tokens this minute` : "",
    l.token_budget ? `${n(used.tokens_this_period)} of ${n(l.token_budget)} tokens this ${l.budget_period ?? "month"}` : "",
  ].filter(Boolean).join("; ");
}

/** A form's fields for a set of limits: what the inputs hold (a number, or empty for no limit). */
export interface LimitFields {
  rpm: number | string | null;
  tpm: number | string | null;
  token_budget: number | string | null;
  budget_period: "day" | "month";
}

export function fieldsOf(l?: Limits | null): LimitFields {
  return { rpm: l?.rpm ?? null, tpm: l?.tpm ?? null, token_budget: l?.token_budget ?? null,
           budget_period: l?.budget_period ?? "month" };
}

/** The limits a form's fields give (an empty field: no limit), or a message saying which field is wrong. */
export function limitsOf(fields: { rpm: unknown; tpm: unknown; token_budget: unknown; budget_period: unknown }):
  Limits | string {
  const names = { rpm: "Requests per minute", tpm: "Tokens per minute", token_budget: "Token budget" };
  const limits: Limits = { rpm: null, tpm: null, token_budget: null, budget_period: null };
  for (const field of ["rpm", "tpm", "token_budget"] as const) {
    const v = fields[field];
    if (v === "" || v === null || v === undefined) continue;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) return `${names[field]}: a whole number of at least 1, or empty for no limit.`;
    limits[field] = n;
  }
  if (limits.token_budget !== null) limits.budget_period = fields.budget_period === "day" ? "day" : "month";
  return limits;
}

/** A time of the server's, in the reader's words ("never" for none). */
export function when(text: string | null | undefined): string {
  if (!text) return "never";
  return parseTime(text).toLocaleString("en", { dateStyle: "medium", timeStyle: "short" });
}
