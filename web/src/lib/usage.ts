// Usage rows as the Account and Admin pages show them: what a row is, its days filled in, bars stacked per day
// (or one bar per group when the rows are not by day), in plain SVG coordinates.

import type { UsageGroup, UsageRow } from "./api";
import { valueScale, type Scale } from "./charts";

const DAY = 86_400_000;
export const MAX_SERIES = 6; // more groups than this in a chart: the smallest are drawn together as "others"
const MAX_FILLED_DAYS = 366; // a longer range shows only the days with usage
const MAX_TOTALS = 12;

/** A UTC day as YYYY-MM-DD, `offset` days from `from` (the server counts usage in UTC days). */
export function utcDay(from: Date = new Date(), offset = 0): string {
  return new Date(from.getTime() + offset * DAY).toISOString().slice(0, 10);
}

/** Every day from `start` to `end` (YYYY-MM-DD, both included). */
export function daysBetween(start: string, end: string): string[] {
  const days: string[] = [];
  for (let t = Date.parse(`${start}T00:00:00Z`); t <= Date.parse(`${end}T00:00:00Z`); t += DAY) {
    days.push(new Date(t).toISOString().slice(0, 10));
  }
  return days;
}

/** What a row is, without its day: "alice · ci-key · echo-model". A row without a key is web use (or a static
 * key of the API's), one without a user a request no account made. */
export function rowLabel(row: UsageRow, by: UsageGroup[]): string {
  const parts = by
    .filter((g) => g !== "day")
    .map((g) => row[g] ?? (g === "key" ? "no key" : g === "user" ? "no account" : "unknown"));
  return parts.join(" · ") || "all";
}

/** Compact numbers for axes: 950, 1.2k, 34k, 5.6M. */
export function compact(n: number): string {
  const short = (v: number, unit: string) => `${v < 10 ? v.toFixed(1).replace(/\.0$/, "") : Math.round(v)}${unit}`;
  if (Math.abs(n) >= 1e9) return short(n / 1e9, "G");
  if (Math.abs(n) >= 1e6) return short(n / 1e6, "M");
  if (Math.abs(n) >= 1e3) return short(n / 1e3, "k");
  return String(Math.round(n));
}

export interface DayBar {
  day: string;
  total: number;
  parts: number[]; // tokens per series, in the order of `series`
}

export interface DayChart {
  series: string[];
  days: DayBar[];
}

/** Tokens per day, split by what the rows are besides their day (the biggest MAX_SERIES - 1, then "others"); the
 * days from `since` (or the first with usage) to `until` (or the last) are all there, empty ones at 0. */
export function byDay(rows: UsageRow[], by: UsageGroup[], since?: string, until?: string): DayChart {
  const totals = new Map<string, number>();
  for (const r of rows) totals.set(rowLabel(r, by), (totals.get(rowLabel(r, by)) ?? 0) + r.total_tokens);
  const ranked = [...totals].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([label]) => label);
  const series = ranked.length > MAX_SERIES ? [...ranked.slice(0, MAX_SERIES - 1), "others"] : ranked;
  const seriesOf = (label: string) => Math.min(ranked.indexOf(label), series.length - 1);

  const seen = [...new Set(rows.map((r) => r.day).filter((d): d is string => !!d))].sort();
  const start = since ?? seen[0];
  const end = until ?? seen.at(-1);
  let days = seen;
  if (start && end && start <= end && (Date.parse(end) - Date.parse(start)) / DAY < MAX_FILLED_DAYS) {
    days = [...new Set([...daysBetween(start, end), ...seen])].sort();
  }
  const bars = new Map(days.map((day) => [day, { day, total: 0, parts: series.map(() => 0) } as DayBar]));
  for (const r of rows) {
    const bar = r.day ? bars.get(r.day) : undefined;
    if (!bar) continue;
    bar.parts[seriesOf(rowLabel(r, by))] += r.total_tokens;
    bar.total += r.total_tokens;
  }
  return { series, days: [...bars.values()] };
}

/** Tokens per group (rows not by day), biggest first: at most MAX_TOTALS bars, the rest as "others". */
export function byLabel(rows: UsageRow[], by: UsageGroup[]): { label: string; tokens: number }[] {
  const totals = new Map<string, number>();
  for (const r of rows) totals.set(rowLabel(r, by), (totals.get(rowLabel(r, by)) ?? 0) + r.total_tokens);
  const ranked = [...totals].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([label, tokens]) => ({ label, tokens }));
  if (ranked.length <= MAX_TOTALS) return ranked;
  const rest = ranked.slice(MAX_TOTALS - 1).reduce((sum, r) => sum + r.tokens, 0);
  return [...ranked.slice(0, MAX_TOTALS - 1), { label: "others", tokens: rest }];
}

export interface Box {
  left: number;
  right: number;
  top: number;
  bottom: number;
}

export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
  series: number;
  title: string;
}

export interface DayLayout {
  bars: Rect[];
  scale: Scale; // tokens -> y
  labels: { x: number; text: string }[]; // some days under the bars (at most about eight)
}

/** Stacked bars of a DayChart inside `box`. */
export function layoutDays(chart: DayChart, box: Box = { left: 56, right: 632, top: 10, bottom: 186 }): DayLayout {
  const scale = valueScale(Math.max(0, ...chart.days.map((d) => d.total)), box.bottom, box.top);
  const n = Math.max(chart.days.length, 1);
  const slot = (box.right - box.left) / n;
  const width = Math.min(slot * 0.75, 36);
  const every = Math.ceil(n / 8);
  const bars: Rect[] = [];
  const labels: { x: number; text: string }[] = [];
  chart.days.forEach((d, i) => {
    const x = box.left + i * slot + (slot - width) / 2;
    let below = 0;
    d.parts.forEach((tokens, series) => {
      if (tokens <= 0) return;
      const y = scale(below + tokens);
      bars.push({ x, y, width, height: scale(below) - y, series,
                  title: `${d.day}${chart.series.length > 1 ? `, ${chart.series[series]}` : ""}: ${tokens} tokens` });
      below += tokens;
    });
    if (i % every === 0) labels.push({ x: x + width / 2, text: d.day.slice(5) });
  });
  return { bars, scale, labels };
}
