/** What happens at the far end of a call placed to the simulated carrier of local mode (`LOCAL_CARRIER_OUTCOMES`). */
export const LOCAL_OUTCOMES = ['answered', 'busy', 'no-answer', 'voicemail', 'failed'] as const;
export type LocalOutcome = (typeof LOCAL_OUTCOMES)[number];
