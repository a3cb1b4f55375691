import { randomBytes } from 'node:crypto';

/**
 * Time-ordered ids: `<prefix>_` + milliseconds since the epoch in base 36
 * (9 characters, sortable until the year 5188) + 10 random base-32 characters.
 * Ordering by id is ordering by creation time, which is what cursor
 * pagination relies on.
 */
const ALPHABET = '0123456789abcdefghijklmnopqrstuv';

export function newId(prefix: string, nowMs = Date.now()): string {
  const time = nowMs.toString(36).padStart(9, '0');
  const bytes = randomBytes(10);
  let rand = '';
  for (const b of bytes) rand += ALPHABET[b & 31];
  return `${prefix}_${time}${rand}`;
}
