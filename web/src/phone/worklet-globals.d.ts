/**
 * The AudioWorkletGlobalScope names the two worklet modules use (TypeScript's DOM library does not
 * declare them), and the worklet URLs the build script defines for the app.
 */
declare class AudioWorkletProcessor {
  readonly port: MessagePort;
  constructor(options?: unknown);
}
declare function registerProcessor(name: string, ctor: new (options?: unknown) => AudioWorkletProcessor): void;
/** The AudioContext's sample rate, inside a worklet. */
declare const sampleRate: number;
/** The context time of the render quantum being processed, inside a worklet. */
declare const currentTime: number;

/** URL of the built capture worklet module (scripts/build-console.mjs). */
declare const __CAPTURE_WORKLET__: string;
/** URL of the built playback worklet module (scripts/build-console.mjs). */
declare const __PLAYBACK_WORKLET__: string;
