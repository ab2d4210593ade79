import { describe, expect, it } from "vitest";
import { ApiError } from "./api";
import { passwordProblem, signInMessage, waitText } from "./signin";

describe("waitText", () => {
  it("rounds the wait up, in words", () => {
    expect([1, 0.2, 45, 60, 61, 3599, 3600, 7500].map(waitText)).toEqual([
      "1 second", "1 second", "45 seconds", "1 minute", "2 minutes", "1 hour", "1 hour", "2 hours 5 minutes"]);
  });
});

describe("signInMessage", () => {
  it("says what each refusal means, and how long to wait after too many attempts", () => {
    expect(signInMessage(new ApiError(429, "slow down", "too_many_attempts", 90))).toBe(
      "Too many sign-in attempts: try again in 2 minutes.");
    expect(signInMessage(new ApiError(403, "x", "account_pending"))).toMatch(/awaits an admin's approval/);
    expect(signInMessage(new ApiError(403, "x", "account_disabled"))).toMatch(/disabled/);
    expect(signInMessage(new ApiError(401, "wrong username or password", "bad_credentials"))).toBe(
      "wrong username or password");
    expect(signInMessage(new ApiError(400, "that username is taken"))).toBe("that username is taken");
  });
});

describe("passwordProblem", () => {
  it("checks the length and the repetition", () => {
    expect(passwordProblem("short", "short")).toMatch(/at least 8/);
    expect(passwordProblem("long enough", "long enougH")).toMatch(/differ/);
    expect(passwordProblem("long enough", "long enough")).toBe("");
  });
});
