// The leaderboard's two charts and the usage bars, as plain SVG coordinates.

export interface Scale {
  (value: number): number;
  ticks: number[];
}

/** A horizontal scale for rating intervals: x from 150 to 590, with round ticks. */
export function intervalScale(ranges: [number, number][], left = 150, right = 590): Scale {
  const lo = ranges.length ? Math.min(...ranges.map((r) => r[0])) : 0;
  const hi = ranges.length ? Math.max(...ranges.map((r) => r[1])) : 1;
  const step = niceStep((hi - lo || 1) / 4);
  const start = Math.floor(lo / step) * step;
  const end = Math.ceil(hi / step) * step || start + step;
  const scale = ((v: number) => left + ((v - start) / (end - start)) * (right - left)) as Scale;
  scale.ticks = [];
  for (let t = start; t <= end + 1e-9; t += step) scale.ticks.push(Math.round(t));
  return scale;
}

function niceStep(raw: number): number {
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
}

/** Points of a radar polygon: value i at angle i of n (from the top, clockwise), `max` at `radius`. With
 * `only`, the one point of that index (of `count`). */
export function radarPoints(values: number[], max: number, radius: number, only?: number, count?: number): string {
  const n = count ?? values.length;
  const point = (v: number, i: number) => {
    const angle = (2 * Math.PI * i) / n - Math.PI / 2;
    const r = (Math.max(0, Math.min(v, max)) / max) * radius;
    return `${(r * Math.cos(angle)).toFixed(1)},${(r * Math.sin(angle)).toFixed(1)}`;
  };
  if (only !== undefined) return point(values[0], only);
  return values.map(point).join(" ");
}

/** A vertical scale for bars from 0 to at least `max`: 0 at `bottom`, the top tick at `top` (SVG y grows down),
 * with round ticks (about four). */
export function valueScale(max: number, bottom: number, top: number): Scale {
  const step = niceStep(Math.max(max, 1) / 4);
  const end = Math.max(step, Math.ceil(max / step) * step);
  const scale = ((v: number) => bottom - (Math.max(0, v) / end) * (bottom - top)) as Scale;
  scale.ticks = [];
  for (let t = 0; t <= end + 1e-9; t += step) scale.ticks.push(Math.round(t));
  return scale;
}
