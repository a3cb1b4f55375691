/**
 * Keypad digits gathered into one message for the agent.
 *
 * Twilio sends each key press as its own `dtmf` event. A caller typing an
 * account number ("1234#") means one thing, so digits are gathered until `#`,
 * a pause (1.5 s by default), or a maximum length, and then handed on as one
 * string. A route may bind single keys to actions (hotkeys, e.g. "0" to reach
 * a person): a hotkey pressed while nothing is being gathered fires at once;
 * pressed in the middle of a number, it is part of the number.
 *
 * Pure apart from the one timer it is given, which its owner (the call
 * session's timer table) releases on close.
 */

/** The keys a phone keypad sends (Twilio: 0-9, * and #; A-D on some lines). */
export const DTMF_KEYS: ReadonlySet<string> = new Set(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D']);

export const DEFAULT_DTMF_GATHER_MS = 1500;
export const DEFAULT_DTMF_MAX_DIGITS = 32;

/** Why a run of digits was handed on. */
export type DtmfEnd = 'terminator' | 'pause' | 'max_digits' | 'flush';

export type DtmfOutcome<A> = { kind: 'digits'; digits: string; ended: DtmfEnd } | { kind: 'hotkey'; key: string; action: A };

export interface DtmfTimer {
  set(ms: number, fn: () => void): void;
  clear(): void;
}

export interface DtmfGathererOptions<A> {
  /** How long a pause ends a run of digits. */
  gatherMs?: number;
  /** A run this long is handed on without waiting. */
  maxDigits?: number;
  /** Single keys bound to actions. */
  hotkeys?: ReadonlyMap<string, A>;
  timer: DtmfTimer;
  emit: (outcome: DtmfOutcome<A>) => void;
}

export class DtmfGatherer<A = never> {
  readonly #gatherMs: number;
  readonly #maxDigits: number;
  readonly #hotkeys: ReadonlyMap<string, A>;
  readonly #timer: DtmfTimer;
  readonly #emit: (outcome: DtmfOutcome<A>) => void;
  #digits = '';
  #closed = false;

  constructor(opts: DtmfGathererOptions<A>) {
    this.#gatherMs = opts.gatherMs ?? DEFAULT_DTMF_GATHER_MS;
    this.#maxDigits = opts.maxDigits ?? DEFAULT_DTMF_MAX_DIGITS;
    this.#hotkeys = opts.hotkeys ?? new Map();
    this.#timer = opts.timer;
    this.#emit = opts.emit;
  }

  /** Digits gathered and not yet handed on. */
  get pending(): string {
    return this.#digits;
  }

  /** One key press. Returns false (and ignores it) for anything that is not a keypad key. */
  push(key: string): boolean {
    if (this.#closed || !DTMF_KEYS.has(key)) return false;
    if (this.#digits === '') {
      const action = this.#hotkeys.get(key);
      if (action !== undefined) {
        this.#emit({ kind: 'hotkey', key, action });
        return true;
      }
    }
    this.#digits += key;
    if (key === '#') this.#handOn('terminator');
    else if (this.#digits.length >= this.#maxDigits) this.#handOn('max_digits');
    else this.#timer.set(this.#gatherMs, this.#onPause);
    return true;
  }

  /** Hands on what is gathered now (the call is ending, the agent changed). */
  flush(): void {
    if (this.#digits !== '') this.#handOn('flush');
  }

  /** Drops anything gathered; later key presses are ignored. */
  close(): void {
    this.#closed = true;
    this.#digits = '';
    this.#timer.clear();
  }

  readonly #onPause = (): void => {
    if (this.#digits !== '') this.#handOn('pause');
  };

  #handOn(ended: DtmfEnd): void {
    const digits = this.#digits;
    this.#digits = '';
    this.#timer.clear();
    this.#emit({ kind: 'digits', digits, ended });
  }
}

/** What an agent is told when the caller types digits. */
export function dtmfMessage(digits: string): string {
  return `The caller typed "${digits}" on the phone keypad.`;
}
