import { describe, expect, it } from "vitest";
import { intervalScale, radarPoints } from "./charts";

describe("intervalScale", () => {
  it("covers every interval with round ticks", () => {
    const scale = intervalScale([[912, 1041], [980, 1103]]);
    expect(scale.ticks[0]).toBeLessThanOrEqual(912);
    expect(scale.ticks.at(-1)).toBeGreaterThanOrEqual(1103);
    expect(scale(scale.ticks[0])).toBe(150);
    expect(scale(scale.ticks.at(-1)!)).toBe(590);
    expect(scale(1000)).toBeGreaterThan(scale(950));
  });
});

describe("radarPoints", () => {
  it("puts the first category at the top and the maximum on the radius", () => {
    expect(radarPoints([10, 10, 10, 10], 10, 100)).toBe("0.0,-100.0 100.0,0.0 0.0,100.0 -100.0,0.0");
    expect(radarPoints([5], 10, 100, 1, 4)).toBe("50.0,0.0");
    expect(radarPoints([20, -3], 10, 100)).toBe("0.0,-100.0 0.0,0.0"); // clamped to 0..max
  });
});
