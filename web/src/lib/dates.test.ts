import { describe, expect, it } from "vitest";
import { groupByDate, parseTime } from "./dates";

describe("groupByDate", () => {
  const now = new Date(2026, 11, 1, 15, 0);
  const at = (days: number) => ({ updated_at: new Date(now.getTime() - days * 86_400_000).toISOString() });

  it("groups newest first into the sidebar's headings", () => {
    const groups = groupByDate([at(0), at(0.2), at(1), at(3), at(20), at(60)], now);
    expect(groups.map((g) => [g.label, g.items.length])).toEqual([
      ["Today", 2], ["Yesterday", 1], ["Previous 7 days", 1], ["Previous 30 days", 1], ["October 2026", 1],
    ]);
  });

  it("reads the server's offset-less times as UTC", () => {
    expect(parseTime("2026-12-01T10:00:00").toISOString()).toBe("2026-12-01T10:00:00.000Z");
    expect(parseTime("2026-12-01T10:00:00+01:00").toISOString()).toBe("2026-12-01T09:00:00.000Z");
  });
});
