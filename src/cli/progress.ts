/**
 * Campaign progress for `npm run campaign`: on a terminal one line redrawn in place
 * (carriage return, line cleared) with a bar, counts, dials/min and ETA; elsewhere
 * (pipes, CI logs) one plain line per update. Colour only on a terminal and without
 * `NO_COLOR`.
 */
import type { Campaign } from './api.js';
import type { Output } from './io.js';

const CLEAR_LINE = '\r\x1b[2K';
const BAR_WIDTH = 20;

type Colour = 'green' | 'red' | 'yellow' | 'cyan' | 'dim' | 'bold';
const SGR: Record<Colour, [number, number]> = { green: [32, 39], red: [31, 39], yellow: [33, 39], cyan: [36, 39], dim: [2, 22], bold: [1, 22] };

const OUTCOME_COLOUR: Record<string, Colour> = {
  answered: 'green',
  voicemail: 'cyan',
  busy: 'yellow',
  'no-answer': 'yellow',
  failed: 'red',
  canceled: 'dim',
  dnc: 'dim',
  'not-dialed': 'red',
};

/** `45 s`, `3m05s`, `2h07m`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Colour is on for a terminal unless `NO_COLOR` is set (to anything but empty) or `TERM=dumb`. */
export function colourWanted(out: Output, env: Readonly<Record<string, string | undefined>>): boolean {
  return out.isTTY === true && (env.NO_COLOR ?? '') === '' && env.TERM !== 'dumb';
}

export class ProgressView {
  readonly tty: boolean;
  readonly #out: Output;
  readonly #colour: boolean;
  /** A redrawable line is on screen (TTY). */
  #drawn = false;

  constructor(out: Output, env: Readonly<Record<string, string | undefined>>) {
    this.#out = out;
    this.tty = out.isTTY === true;
    this.#colour = colourWanted(out, env);
  }

  #paint(c: Colour, s: string): string {
    if (!this.#colour) return s;
    const [on, off] = SGR[c];
    return `\x1b[${on}m${s}\x1b[${off}m`;
  }

  /** Shows the campaign's state `elapsedS` seconds into watching. */
  update(c: Campaign, elapsedS: number): void {
    if (this.tty) {
      this.#out.write(`${CLEAR_LINE}${this.#ttyLine(c, elapsedS)}`);
      this.#drawn = true;
    } else {
      this.#out.write(`${plainLine(c, elapsedS)}\n`);
    }
  }

  /** Ends the redrawn line so other output starts on a fresh one. */
  finish(): void {
    if (this.#drawn) this.#out.write('\n');
    this.#drawn = false;
  }

  #ttyLine(c: Campaign, elapsedS: number): string {
    const p = c.progress;
    const total = p.counts.total;
    const done = p.counts.byState.done ?? 0;
    const filled = total > 0 ? Math.round((done / total) * BAR_WIDTH) : 0;
    const bar = `${this.#paint('green', '█'.repeat(filled))}${this.#paint('dim', '░'.repeat(BAR_WIDTH - filled))}`;
    const pct = total > 0 ? Math.floor((done / total) * 100) : 0;
    // Segments in order of importance: the line is cut at a segment boundary to fit the terminal.
    const segs: Array<{ plain: string; shown: string }> = [];
    const add = (plain: string, shown = plain): void => {
      segs.push({ plain, shown });
    };
    add(`${c.status} [${'#'.repeat(BAR_WIDTH)}] ${String(pct).padStart(3)}% ${done}/${total} done`, `${this.#paint('bold', c.status)} [${bar}] ${String(pct).padStart(3)}% ${done}/${total} done`);
    for (const [k, v] of Object.entries(p.counts.byOutcome).sort((a, b) => b[1] - a[1])) {
      add(`${v} ${k}`, `${this.#paint(OUTCOME_COLOUR[k] ?? 'bold', String(v))} ${k}`);
    }
    add(`${p.counts.byState.dialing ?? 0} in flight`);
    add(`${p.dialsLastMinute} dials/min`);
    if (p.etaSeconds !== null && c.status === 'running') add(`ETA ${formatDuration(p.etaSeconds)}`);
    add(formatDuration(elapsedS), this.#paint('dim', formatDuration(elapsedS)));
    const columns = this.#out.columns !== undefined && this.#out.columns > 0 ? this.#out.columns : 80;
    const width = Math.max(20, columns - 1);
    let plainLen = 0;
    const shown: string[] = [];
    for (const [i, s] of segs.entries()) {
      const len = s.plain.length + (i > 0 ? 3 : 0);
      if (i > 0 && plainLen + len > width) break;
      plainLen += len;
      shown.push(s.shown);
    }
    return shown.join(' · ');
  }
}

/** The line written once per second when output is not a terminal. */
export function plainLine(c: Campaign, elapsedS: number): string {
  const p = c.progress;
  const outcomes = Object.entries(p.counts.byOutcome)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  return (
    `[${String(Math.round(elapsedS)).padStart(4)} s] ${c.status.padEnd(9)} done ${p.counts.byState.done ?? 0}/${p.counts.total}` +
    ` · in flight ${p.counts.byState.dialing ?? 0} · attempts ${p.counts.attempts} · ${p.dialsLastMinute} dials/min` +
    `${p.etaSeconds !== null && c.status === 'running' ? ` · ETA ${p.etaSeconds} s` : ''}${outcomes ? ` · ${outcomes}` : ''}`
  );
}
