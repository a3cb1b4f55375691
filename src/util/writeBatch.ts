/**
 * Write coalescing for the media hot path, without changing any message.
 *
 * Every `ws.send` ends in its own `writev` syscall, and syscalls are most of
 * what a bridge costs. A socket written to during one turn of the event loop is
 * corked on its first write and uncorked once, in a `setImmediate` that runs
 * right after the current I/O phase. All WebSocket frames written to it in that
 * turn then leave in one syscall: a `media` and its `mark` always, and under
 * load several frames of the same call. Frame boundaries are untouched (each
 * frame is still its own WebSocket message); the delay is the rest of the
 * current I/O phase, i.e. only as long as the loop is busy with other work.
 */
import type { Socket } from 'node:net';
import type WebSocket from 'ws';

const corked = new Set<Socket>();
let scheduled = false;

function flush(): void {
  scheduled = false;
  for (const socket of corked) socket.uncork();
  corked.clear();
}

/** The net.Socket under a ws WebSocket, or undefined if ws does not expose one. */
export function socketOf(ws: WebSocket): Socket | undefined {
  // `_socket` is ws's internal handle on the TCP socket; checked, not trusted.
  const s = (ws as unknown as { _socket?: unknown })._socket;
  return typeof s === 'object' && s !== null && typeof (s as Socket).cork === 'function' ? (s as Socket) : undefined;
}

/** Corks `socket` until the end of this event-loop turn (idempotent within a turn). */
export function corkForThisTurn(socket: Socket | undefined): void {
  if (socket === undefined || corked.has(socket)) return;
  socket.cork();
  corked.add(socket);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
}
