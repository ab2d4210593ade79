// What the sign-in screen says (it is in the app's first load: the Account and Admin pages' helpers are in
// ./account, loaded with them).

import { ApiError, messageOf } from "./api";

export const MIN_PASSWORD = 8; // as the server (parley.store.accounts) checks

/** "45 seconds", "3 minutes", "2 hours 5 minutes": how long to wait (rounded up: trying earlier fails again). */
export function waitText(seconds: number): string {
  const s = Math.max(1, Math.ceil(seconds));
  const plural = (n: number, unit: string) => `${n} ${unit}${n === 1 ? "" : "s"}`;
  if (s < 60) return plural(s, "second");
  const minutes = Math.ceil(s / 60);
  if (minutes < 60) return plural(minutes, "minute");
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? `${plural(hours, "hour")} ${plural(minutes % 60, "minute")}` : plural(hours, "hour");
}

/** What a failed sign-in or sign-up says to the person at the screen. */
export function signInMessage(e: unknown): string {
  if (!(e instanceof ApiError)) return messageOf(e);
  switch (e.code) {
    case "account_pending":
      return "Your account awaits an admin's approval: you can sign in once it is approved.";
    case "account_disabled":
      return "This account is disabled: ask an admin of this server.";
    case "too_many_attempts":
      return e.retryAfter !== null
        ? `Too many sign-in attempts: try again in ${waitText(e.retryAfter)}.`
        : `Too many sign-in attempts: ${e.message}`;
    case "signup_closed":
      return "Sign-up is closed on this server: an admin makes accounts.";
  }
  if (e.status === 429) return `Too many attempts${e.retryAfter !== null ? `: try again in ${waitText(e.retryAfter)}` : ""}.`;
  return e.message;
}

/** A problem with a new password and its repetition, or "" when there is none. */
export function passwordProblem(password: string, repeat: string): string {
  if (password.length < MIN_PASSWORD) return `A password has at least ${MIN_PASSWORD} characters.`;
  if (password !== repeat) return "The two passwords differ.";
  return "";
}
