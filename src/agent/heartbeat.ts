/**
 * The agent sockets' liveness check, shared by every provider's leg: a ping
 * every interval; any frame from the peer (a pong or anything else) proves the
 * connection alive. Two silent intervals in a row mean it is gone, so a loaded
 * event loop that reads the pong a little late is not mistaken for a dead peer.
 */
import type WebSocket from 'ws';

export class Heartbeat {
  #heard = 0;
  #silentTicks = 0;
  #timer: NodeJS.Timeout | undefined;

  /** Something came from the peer. Cheap: called for every frame. */
  heard(): void {
    this.#heard++;
  }

  /** Pings `ws` every `intervalMs` (0: off) and counts its pongs; two silent intervals call `onLost` once. */
  start(ws: WebSocket, intervalMs: number, onLost: () => void): void {
    ws.on('pong', () => this.heard());
    if (intervalMs <= 0) return;
    this.#timer = setInterval(() => {
      if (this.#heard > 0) {
        this.#heard = 0;
        this.#silentTicks = 0;
      } else if (++this.#silentTicks >= 2) {
        this.stop();
        onLost();
        return;
      }
      ws.ping();
    }, intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
