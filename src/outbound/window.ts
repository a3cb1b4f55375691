/**
 * Calling windows: the local hours at which a campaign may call a contact.
 *
 * A window is a set of weekdays and a wall-clock interval `[start, end)`,
 * read in the contact's time zone, else the window's, else UTC. When `end`
 * is earlier than `start` the interval crosses midnight and belongs to the
 * day it starts on: `fri 21:00–02:00` covers Friday 21:00 to Saturday 02:00.
 * `end` may be `24:00` (until midnight); `start` and `end` may not be equal.
 *
 * Everything is wall-clock time: on a spring-forward day a window that starts
 * in the skipped hour opens when the clock jumps past its start (a window
 * entirely inside the skipped hour does not open that day), and a local time
 * in the repeated hour of a fall-back day is inside the window both times it
 * occurs.
 *
 * Time zones are resolved with `Intl.DateTimeFormat` alone: one cached
 * formatter per zone, and UTC offsets cached per zone and minute, so
 * scheduling thousands of contacts at the same instant costs a few map
 * look-ups each.
 */
import { z } from 'zod';

/** Weekday names in window order (Monday first). */
export const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
export type Weekday = (typeof WEEKDAYS)[number];

export interface CallingWindow {
  days: Weekday[];
  /** `HH:MM`, 00:00–23:59, inclusive. */
  start: string;
  /** `HH:MM`, 00:00–24:00, exclusive; earlier than `start` means the window crosses midnight. */
  end: string;
  /** IANA zone used for contacts without one (default UTC). */
  timezone?: string;
}

/** Wall-clock time of an instant in a zone. */
export interface LocalTimeParts {
  year: number;
  /** 1–12. */
  month: number;
  day: number;
  weekday: Weekday;
  /** 0–23. */
  hour: number;
  minute: number;
  second: number;
  /** Local time minus UTC, in minutes (`-240` for New York in summer, `330` for Kolkata). */
  offsetMinutes: number;
}

const MINUTE = 60_000;
const DAY = 86_400_000;
/** `Date#getUTCDay()` order. */
const JS_DAYS: readonly Weekday[] = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const START_RE = /^([01]\d|2[0-3]):([0-5]\d)$/;
const END_RE = /^(?:([01]\d|2[0-3]):([0-5]\d)|24:00)$/;

// ---------------------------------------------------------------- time zones

const MAX_ZONES = 1_000;
const MAX_OFFSETS_PER_ZONE = 100_000;

interface Zone {
  fmt: Intl.DateTimeFormat;
  /** UTC minute → offset in ms. */
  offsets: Map<number, number>;
}

const zones = new Map<string, Zone>();

function zone(tz: string): Zone {
  let z = zones.get(tz);
  if (z === undefined) {
    // Throws RangeError for a zone Intl does not know.
    const fmt = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
    z = { fmt, offsets: new Map() };
    // Names come from user input: keep the cache bounded.
    if (zones.size < MAX_ZONES) zones.set(tz, z);
  }
  return z;
}

/** Whether Intl knows `tz` as a named time zone (`Europe/Paris`, `UTC`; not `+02:00`). */
export function isValidTimeZone(tz: string): boolean {
  if (zones.has(tz)) return true;
  if (!/^[A-Za-z][A-Za-z0-9_+\-/]*$/.test(tz)) return false;
  try {
    zone(tz);
    return true;
  } catch {
    return false;
  }
}

/** Offset (local minus UTC, ms) of `tz` at instant `t`. */
function offsetAt(z: Zone, t: number): number {
  const minute = Math.floor(t / MINUTE);
  const hit = z.offsets.get(minute);
  if (hit !== undefined) return hit;
  const at = minute * MINUTE;
  let y = 0;
  let mo = 1;
  let d = 1;
  let h = 0;
  let mi = 0;
  let s = 0;
  for (const p of z.fmt.formatToParts(at)) {
    switch (p.type) {
      case 'year': y = Number(p.value); break;
      case 'month': mo = Number(p.value); break;
      case 'day': d = Number(p.value); break;
      case 'hour': h = Number(p.value); break;
      case 'minute': mi = Number(p.value); break;
      case 'second': s = Number(p.value); break;
      default: break;
    }
  }
  const local = new Date(0);
  local.setUTCFullYear(y, mo - 1, d); // not Date.UTC: it maps years 0–99 to 1900–1999
  local.setUTCHours(h, mi, s, 0);
  const off = local.getTime() - at;
  if (z.offsets.size >= MAX_OFFSETS_PER_ZONE) z.offsets.clear();
  z.offsets.set(minute, off);
  return off;
}

/** The wall-clock time of `nowMs` in `tz` (throws RangeError for an unknown zone). */
export function localTimeParts(nowMs: number, tz: string): LocalTimeParts {
  const off = offsetAt(zone(tz), nowMs);
  const d = new Date(nowMs + off);
  return {
    year: d.getUTCFullYear(),
    month: d.getUTCMonth() + 1,
    day: d.getUTCDate(),
    weekday: JS_DAYS[d.getUTCDay()] as Weekday,
    hour: d.getUTCHours(),
    minute: d.getUTCMinutes(),
    second: d.getUTCSeconds(),
    offsetMinutes: off / MINUTE,
  };
}

// ------------------------------------------------------------------ windows

function minutesOf(hhmm: string): number {
  return Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));
}

export const callingWindowSchema = z
  .strictObject({
    /** Default: every day. */
    days: z
      .array(z.enum(WEEKDAYS))
      .min(1, 'at least one day')
      .refine((d) => new Set(d).size === d.length, 'a day is listed twice')
      .default(() => [...WEEKDAYS]),
    start: z.string().regex(START_RE, 'must be HH:MM, 00:00 to 23:59'),
    end: z.string().regex(END_RE, 'must be HH:MM, 00:00 to 24:00 (exclusive; before start crosses midnight)'),
    timezone: z.string().refine(isValidTimeZone, 'not a known IANA time zone (e.g. America/New_York)').optional(),
  })
  .refine((w) => !START_RE.test(w.start) || !END_RE.test(w.end) || minutesOf(w.start) !== minutesOf(w.end), {
    message: 'start and end are equal; for a whole day use 00:00 to 24:00',
    path: ['end'],
  });

interface ParsedWindow {
  /** By `getUTCDay()` index. */
  days: boolean[];
  any: boolean;
  start: number;
  end: number;
  crossing: boolean;
  zone: Zone;
}

function parse(w: CallingWindow, contactTz: string | undefined): ParsedWindow {
  if (!START_RE.test(w.start) || !END_RE.test(w.end)) {
    throw new RangeError(`calling window: bad start/end "${w.start}"–"${w.end}" (HH:MM)`);
  }
  const start = minutesOf(w.start);
  const end = minutesOf(w.end);
  if (start === end) throw new RangeError(`calling window: start and end are both ${w.start}`);
  const days = JS_DAYS.map((d) => w.days.includes(d));
  const tz = contactTz !== undefined && contactTz !== '' ? contactTz : w.timezone !== undefined && w.timezone !== '' ? w.timezone : 'UTC';
  return { days, any: days.includes(true), start, end, crossing: end < start, zone: zone(tz) };
}

/** Whether local day `dayIndex` (days since 1970-01-01, a Thursday) is a window day. */
function isDay(p: ParsedWindow, dayIndex: number): boolean {
  return p.days[(((dayIndex + 4) % 7) + 7) % 7] === true;
}

function openAt(p: ParsedWindow, t: number): boolean {
  const local = t + offsetAt(p.zone, t);
  const dayIndex = Math.floor(local / DAY);
  const minute = Math.floor((local - dayIndex * DAY) / MINUTE);
  if (!p.crossing) return minute >= p.start && minute < p.end && isDay(p, dayIndex);
  return (minute >= p.start && isDay(p, dayIndex)) || (minute < p.end && isDay(p, dayIndex - 1));
}

/**
 * Whether a contact may be called at `nowMs`: in `contactTz` if given, else
 * the window's zone, else UTC. Throws RangeError for an unknown zone or a
 * malformed window (validate with {@link callingWindowSchema} first).
 */
export function isWithinWindow(w: CallingWindow, nowMs: number, contactTz?: string): boolean {
  return openAt(parse(w, contactTz), nowMs);
}

/**
 * The earliest instant at or after `nowMs` at which {@link isWithinWindow}
 * holds: `nowMs` itself when the window is open, `undefined` when it has no
 * days. Exact to the millisecond across DST changes (the window opens at the
 * first instant whose local time is inside it).
 *
 * Cost: one offset per candidate day, not a scan. The window opens either
 * when the local clock reaches `start` on a window day (solved per day for
 * the offsets in force around it) or at a UTC-offset change that jumps the
 * clock into the window; the latter is looked for, by bisection, only when
 * the offset differs between now and the first candidate.
 */
export function nextWindowStart(w: CallingWindow, nowMs: number, contactTz?: string): number | undefined {
  const p = parse(w, contactTz);
  if (!p.any) return undefined;
  if (openAt(p, nowMs)) return nowMs;
  const z = p.zone;
  const today = Math.floor((nowMs + offsetAt(z, nowMs)) / DAY);

  // 1. The clock reaching `start` on a window day. Yesterday is included for
  //    the repeated hour of a fall-back night; eight days ahead covers a week
  //    whose only window fell into a skipped hour.
  let best: number | undefined;
  for (let day = today - 1; day <= today + 8 && best === undefined; day++) {
    if (!isDay(p, day)) continue;
    const local = day * DAY + p.start * MINUTE;
    // The offsets in force on either side of that local time: equal on most
    // days; different around a DST change, where the local time has no
    // instant (a gap) or two (an overlap).
    const before = offsetAt(z, local - DAY);
    const after = offsetAt(z, local + DAY);
    for (const off of before === after ? [before] : [before, after]) {
      const t = local - off;
      if (t <= nowMs || (best !== undefined && t >= best)) continue;
      if (before !== after && offsetAt(z, t) !== off) continue;
      if (openAt(p, t)) best = t;
    }
  }

  // 2. An offset change before that, jumping the clock into the window.
  let from = nowMs;
  const until = best ?? nowMs + 9 * DAY;
  for (;;) {
    const o = offsetAt(z, from);
    if (o === offsetAt(z, until)) break;
    let lo = Math.floor(from / MINUTE);
    let hi = Math.floor(until / MINUTE);
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (offsetAt(z, mid * MINUTE) === o) lo = mid;
      else hi = mid;
    }
    const change = hi * MINUTE;
    if (best !== undefined && change >= best) break;
    if (openAt(p, change)) return change;
    from = change;
  }
  return best;
}
