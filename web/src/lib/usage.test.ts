import { describe, expect, it } from "vitest";
import type { UsageRow } from "./api";
import { usageParams } from "./api";
import { valueScale } from "./charts";
import { byDay, byLabel, compact, daysBetween, layoutDays, MAX_SERIES, rowLabel, utcDay } from "./usage";

const row = (over: Partial<UsageRow>): UsageRow => ({
  requests: 1, prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, errors: 0, mean_latency_ms: 10, ...over,
});

describe("valueScale", () => {
  it("starts at 0 on the bottom and ends on a round tick at the top", () => {
    const scale = valueScale(1234, 200, 10);
    expect(scale.ticks[0]).toBe(0);
    expect(scale.ticks.at(-1)).toBeGreaterThanOrEqual(1234);
    expect(scale(0)).toBe(200);
    expect(scale(scale.ticks.at(-1)!)).toBe(10);
    expect(scale.ticks).toEqual([0, 500, 1000, 1500]);
  });
  it("has a sensible axis with nothing to show", () => {
    expect(valueScale(0, 100, 0).ticks).toEqual([0, 1]);
  });
});

describe("days", () => {
  it("counts UTC days across a month's end", () => {
    expect(utcDay(new Date("2025-01-31T23:30:00Z"), 1)).toBe("2025-02-01");
    expect(daysBetween("2025-02-27", "2025-03-02")).toEqual(["2025-02-27", "2025-02-28", "2025-03-01", "2025-03-02"]);
  });
});

describe("rowLabel", () => {
  it("names a row by its groups other than the day, with words for what is missing", () => {
    const r = row({ user: "alice", key: null, model: "echo-model", day: "2025-03-01" });
    expect(rowLabel(r, ["user", "key", "model", "day"])).toBe("alice · no key · echo-model");
    expect(rowLabel(r, ["day"])).toBe("all");
  });
});

describe("compact", () => {
  it("shortens big numbers for an axis", () => {
    expect([0, 950, 1200, 34_000, 5_600_000, 2e9].map(compact)).toEqual(["0", "950", "1.2k", "34k", "5.6M", "2G"]);
  });
});

describe("byDay", () => {
  const rows = [
    row({ model: "a", day: "2025-03-01", total_tokens: 10 }),
    row({ model: "b", day: "2025-03-01", total_tokens: 30 }),
    row({ model: "a", day: "2025-03-03", total_tokens: 5 }),
  ];
  it("stacks tokens per day by model, biggest series first, with the days between at 0", () => {
    const chart = byDay(rows, ["model", "day"], "2025-02-28", "2025-03-03");
    expect(chart.series).toEqual(["b", "a"]);
    expect(chart.days.map((d) => [d.day, d.total, d.parts])).toEqual([
      ["2025-02-28", 0, [0, 0]], ["2025-03-01", 40, [30, 10]], ["2025-03-02", 0, [0, 0]], ["2025-03-03", 5, [0, 5]],
    ]);
  });
  it("puts the smallest series together as others", () => {
    const many = Array.from({ length: 9 }, (_, i) => row({ user: `u${i}`, day: "2025-03-01", total_tokens: 100 - i }));
    const chart = byDay(many, ["user", "day"]);
    expect(chart.series.length).toBe(MAX_SERIES);
    expect(chart.series.at(-1)).toBe("others");
    expect(chart.days[0].parts.at(-1)).toBe(95 + 94 + 93 + 92);
    expect(chart.days[0].total).toBe(many.reduce((s, r) => s + r.total_tokens, 0));
  });
  it("lays the bars out stacked, with a few day labels", () => {
    const layout = layoutDays(byDay(rows, ["model", "day"], "2025-03-01", "2025-03-03"),
                              { left: 0, right: 300, top: 0, bottom: 100 });
    expect(layout.bars.map((b) => b.series)).toEqual([0, 1, 1]);
    const [b, a] = layout.bars;
    expect(b.y + b.height).toBe(100); // the first part stands on the axis
    expect(a.y + a.height).toBeCloseTo(b.y); // the second on the first
    expect(a.title).toBe("2025-03-01, a: 10 tokens");
    expect(layout.labels.map((l) => l.text)).toEqual(["03-01", "03-02", "03-03"]);
  });
});

describe("byLabel", () => {
  it("totals groups biggest first", () => {
    const rows = [row({ user: "a", model: "m", total_tokens: 1 }), row({ user: "b", model: "m", total_tokens: 9 }),
                  row({ user: "a", model: "m", total_tokens: 2 })];
    expect(byLabel(rows, ["user", "model"])).toEqual([{ label: "b · m", tokens: 9 }, { label: "a · m", tokens: 3 }]);
  });
});

describe("usageParams", () => {
  it("is the query string of the server's usage routes", () => {
    expect(usageParams({ by: ["user", "day"], since: "2025-03-01", user_id: 3 }, "csv"))
      .toBe("by=user%2Cday&since=2025-03-01&user_id=3&format=csv");
    expect(usageParams({ by: [], user_id: null })).toBe("by=");
  });
});
