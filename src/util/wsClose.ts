/**
 * Closing a WebSocket we own: a close frame when it is open (the peer gets a
 * code and a reason), then a hard terminate if the peer has not completed the
 * handshake within `terminateAfterMs`; a socket still connecting is dropped.
 */
import WebSocket from 'ws';

/** How long a peer gets to answer our close frame before the socket is destroyed. */
export const TERMINATE_AFTER_MS = 2000;

export function closeWebSocket(ws: WebSocket, code: number, reason: string): void {
  if (ws.readyState === WebSocket.OPEN) {
    ws.close(code, reason);
    setTimeout(() => ws.terminate(), TERMINATE_AFTER_MS).unref();
  } else if (ws.readyState === WebSocket.CONNECTING) {
    ws.terminate();
  }
}
