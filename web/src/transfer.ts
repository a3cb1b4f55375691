/** Transfers to a person in words: the steps of `call.updated` `change: "transfer"` events and the outcomes on a call's record. */

/** One step of a transfer, as `call.updated` `change: "transfer"` events carry it (schemas.ts `transferData`). */
export interface TransferStepData {
  step: string;
  transferId?: string | undefined;
  target?: string | undefined;
  to?: string | undefined;
  mode?: string | undefined;
  outcome?: string | undefined;
  why?: string | undefined;
}

const OUTCOMES: Record<string, string> = {
  answered: 'answered',
  busy: 'busy',
  'no-answer': 'no answer',
  failed: 'failed',
  canceled: 'canceled',
  pending: 'under way',
};

/** An outcome (`no-answer`, …) in words. */
export function outcomeLabel(outcome: string | undefined): string {
  return outcome === undefined ? '' : (OUTCOMES[outcome] ?? outcome);
}

/** One step of a transfer in words. */
export function stepLabel(s: Pick<TransferStepData, 'step' | 'outcome'>): string {
  switch (s.step) {
    case 'requested':
      return 'Requested';
    case 'dialing':
      return 'Dialing…';
    case 'answered':
      return 'Answered';
    case 'joined':
      return 'Joined: the caller and the person are talking';
    case 'failed':
      return `Not reached (${outcomeLabel(s.outcome ?? 'failed')})`;
    case 'returned':
      return 'Back with the agent';
    case 'completed':
      return 'Completed';
    default:
      return s.step;
  }
}

/** A transfer's steps as the Live page follows them. */
export interface TransferProgress {
  transferId: string | undefined;
  /** The target's name, or the number for a transfer to an explicit address. */
  target: string;
  mode: string | undefined;
  steps: TransferStepData[];
}

const OVER = new Set(['failed', 'returned', 'completed']);

/** True while the transfer is under way (the person's phone rings, or they are talking). */
export function transferActive(p: TransferProgress | undefined): boolean {
  const last = p?.steps.at(-1);
  return last !== undefined && !OVER.has(last.step);
}

/** The progress with one more step (a new transfer of the same call starts afresh). */
export function withStep(p: TransferProgress | undefined, s: TransferStepData): TransferProgress {
  const target = s.target ?? s.to ?? p?.target ?? '';
  if (p === undefined || (s.transferId !== undefined && s.transferId !== p.transferId)) {
    return { transferId: s.transferId, target, mode: s.mode, steps: [s] };
  }
  return { ...p, target, mode: s.mode ?? p.mode, steps: [...p.steps, s] };
}
