/**
 * What the protocol fakes share to let a test wait for something they will
 * receive (a frame, a connection): a set of waiters polled on each event, each
 * settling once, rejecting after its timeout, and always clearing its timer.
 */
import type { RawData } from 'ws';

export interface Waiter {
  poll(): boolean;
  fail(err: Error): void;
}

export type WaitUntil = <T>(waiters: Set<Waiter>, check: () => { value: T } | undefined, timeoutMs: number, what: string, closed: () => Error | undefined) => Promise<T>;

/** `waitUntil` for one fake, whose timeouts say `<label>: timed out after …`. */
export function waiterFor(label: string): WaitUntil {
  return <T>(waiters: Set<Waiter>, check: () => { value: T } | undefined, timeoutMs: number, what: string, closed: () => Error | undefined): Promise<T> => {
    const now = check();
    if (now !== undefined) return Promise.resolve(now.value);
    const early = closed();
    if (early !== undefined) return Promise.reject(early);
    return new Promise<T>((resolve, reject) => {
      const waiter: Waiter = {
        poll: () => {
          const got = check();
          if (got === undefined) return false;
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve(got.value);
          return true;
        },
        fail: (err) => {
          clearTimeout(timer);
          waiters.delete(waiter);
          reject(err);
        },
      };
      const timer = setTimeout(() => waiter.fail(new Error(`${label}: timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
      waiters.add(waiter);
    });
  };
}

/** A WebSocket message as text (ws hands over a Buffer, a list of them, or an ArrayBuffer). */
export function rawText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}
