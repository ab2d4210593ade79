import { describe, expect, it } from "vitest";
import { describeLimits, fieldsOf, limitsOf, usedText } from "./account";

describe("limits", () => {
  it("reads a form's fields, empty for none, a budget by the month unless the day is chosen", () => {
    expect(limitsOf({ rpm: 60, tpm: "", token_budget: "1000", budget_period: "" })).toEqual(
      { rpm: 60, tpm: null, token_budget: 1000, budget_period: "month" });
    expect(limitsOf({ rpm: null, tpm: null, token_budget: 5, budget_period: "day" })).toEqual(
      { rpm: null, tpm: null, token_budget: 5, budget_period: "day" });
    expect(limitsOf({ rpm: 0, tpm: null, token_budget: null, budget_period: "day" })).toMatch(/Requests per minute/);
    expect(limitsOf({ rpm: 1.5, tpm: null, token_budget: null, budget_period: "day" })).toMatch(/whole number/);
  });
  it("gives back the limits its fields were filled from", () => {
    const limits = { rpm: 5, tpm: null, token_budget: 70, budget_period: "day" as const };
    expect(limitsOf(fieldsOf(limits))).toEqual(limits);
    expect(limitsOf(fieldsOf(null))).toEqual({ rpm: null, tpm: null, token_budget: null, budget_period: null });
  });
  it("says how much of each limit set is used", () => {
    const used = { requests_this_minute: 2, tokens_this_minute: 0, tokens_this_period: 1234 };
    expect(usedText({ rpm: 30, tpm: null, token_budget: 50000, budget_period: "day" }, used)).toBe(
      "2 of 30 requests this minute; 1,234 of 50,000 tokens this day");
    expect(usedText({ rpm: null, tpm: null, token_budget: null, budget_period: null }, used)).toBe("");
  });
  it("describes limits in words", () => {
    expect(describeLimits({ rpm: 60, tpm: null, token_budget: 1000000, budget_period: "day" })).toBe(
      "60 requests/min · 1,000,000 tokens/day");
    expect(describeLimits({ rpm: null, tpm: null, token_budget: null, budget_period: null })).toBe("no limits");
  });
});
