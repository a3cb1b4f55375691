/**
 * A {@link CallJournal} that keeps every entry in memory, by CallSid: for
 * in-process tests of call sessions without a store.
 */
import type { CallJournal, CallJournalEntry, EndReason } from '../calls/journal.js';

export interface JournaledCall {
  entries: CallJournalEntry[];
  /** Texts Playline asked the carrier to speak, in order. */
  spoken: string[];
  transcript: Array<{ role: 'user' | 'agent'; text: string }>;
  dtmf: string[];
  conversationId: string | undefined;
  endReason: EndReason | undefined;
  agentReconnects: number;
}

export class RecordingJournal implements CallJournal {
  readonly calls = new Map<string, JournaledCall>();

  record(callSid: string, entry: CallJournalEntry): void {
    const c = this.get(callSid);
    c.entries.push(entry);
    switch (entry.type) {
      case 'spoke':
        c.spoken.push(entry.text);
        return;
      case 'transcript':
        c.transcript.push({ role: entry.role, text: entry.text });
        return;
      case 'dtmf':
        c.dtmf.push(entry.digit);
        return;
      case 'agent_ready':
        c.conversationId = entry.conversationId;
        return;
      case 'session_ended':
        c.endReason = entry.endReason;
        c.agentReconnects = entry.agentReconnects;
        return;
      case 'stream_started':
      case 'agent_switched':
        return;
    }
  }

  /** The call's journal (empty when nothing was recorded yet). */
  get(callSid: string): JournaledCall {
    let c = this.calls.get(callSid);
    if (c === undefined) {
      c = { entries: [], spoken: [], transcript: [], dtmf: [], conversationId: undefined, endReason: undefined, agentReconnects: 0 };
      this.calls.set(callSid, c);
    }
    return c;
  }
}
