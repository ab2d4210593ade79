// The history sidebar's groups: Today, Yesterday, Previous 7 days, Previous 30 days, then by month.

export interface Dated {
  updated_at: string;
}

export interface Group<T> {
  label: string;
  items: T[];
}

const DAY = 86_400_000;

/** The server's times are UTC; SQLite gives them back without the offset. */
export function parseTime(text: string): Date {
  return new Date(/(Z|[+-]\d\d:?\d\d)$/.test(text) ? text : `${text}Z`);
}

function startOfDay(d: Date): number {
  return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
}

export function groupLabel(when: Date, now: Date): string {
  const days = Math.round((startOfDay(now) - startOfDay(when)) / DAY);
  if (days <= 0) return "Today";
  if (days === 1) return "Yesterday";
  if (days <= 7) return "Previous 7 days";
  if (days <= 30) return "Previous 30 days";
  return when.toLocaleString("en", { month: "long", year: "numeric" });
}

/** Items (newest first) in their groups, in order. */
export function groupByDate<T extends Dated>(items: T[], now: Date = new Date()): Group<T>[] {
  const groups: Group<T>[] = [];
  for (const item of items) {
    const label = groupLabel(parseTime(item.updated_at), now);
    const last = groups[groups.length - 1];
    if (last && last.label === label) last.items.push(item);
    else groups.push({ label, items: [item] });
  }
  return groups;
}
