/** Whether a call record has a recording that can be served (pure; used by the call view and the API). */
import type { CallRow } from '../store/calls.js';

export function hasRecording(row: Pick<CallRow, 'recordingBackend' | 'recordingStatus' | 'recordingSid'>): boolean {
  if (row.recordingBackend === null) return false;
  if (row.recordingStatus === 'deleted' || row.recordingStatus === 'failed' || row.recordingStatus === 'absent') return false;
  return row.recordingBackend === 'local' || row.recordingSid !== null;
}
