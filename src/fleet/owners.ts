/**
 * Call ownership and control across the fleet: the process that holds a call's media WebSocket
 * owns the call; status callbacks, AMD results, API hang-ups, transfers and the console's "end
 * call" may land on any process, and reach the owner through Redis pub/sub. A process running a
 * transfer owns its transfer id (`tr_…`) the same way, so Twilio's callbacks about it reach it.
 *
 * Keys and channels (P = prefix, default `playline:`):
 *   P owner:<callSid>   STRING the owning process id; PX = `ttlMs` (default 15 s), refreshed by
 *                              the owner every ttl/3 (`startRefreshing`), deleted by `disown` only
 *                              while it still names this process
 *   P ctl:<processId>   pub/sub channel of one process: requests to it and replies to its sends
 *
 * Wire format (JSON, zod-checked on receipt; anything else is logged and dropped):
 *   { v: 1, kind: 'request', id, from, callSid, message: ControlMessage }
 *   { v: 1, kind: 'reply',   id, answer: ControlAnswer }
 *
 * `askAll(question)`: PUBLISH to `P ctl:all` (every process subscribes to it); the receiver count
 * says how many answers to wait for (this process's own excepted), up to `timeoutMs`; what came
 * by then is returned. Used for `GET /v1/live` across the fleet. Wire format:
 *   { v: 1, kind: 'ask', id, from, question: 'live' }   answered with a `reply` as above
 *
 * `send(callSid, message)`: looks up the owner; this process → its handler directly; another →
 * PUBLISH to its channel (0 receivers → `no_owner`: its process is gone) and wait for the reply on
 * ours, up to `timeoutMs` (default 3 s) → `timeout`. An owner that no longer holds the call
 * answers `no_owner`. No owner key → `no_owner` (the call ended, or its process died and the key
 * expired). Handlers that throw answer `{ ok: false, error }`.
 *
 * Connections: commands on the given client; subscriptions on a separate connection
 * (`client.duplicate()`), as ioredis requires; ioredis subscribes again after a reconnect.
 *
 * Failure modes: Redis unreachable → `send`, `own`, `disown` reject with `redis_unavailable`;
 * refreshes that fail go to `onError` and are retried (ownership lasts three ticks). `close()`
 * rejects the sends still waiting with `closed`.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { z } from 'zod';
import {
  asInt,
  checkPrefix,
  DEFAULT_PREFIX,
  defaultProcessId,
  failFastOptions,
  FleetError,
  holdClient,
  LuaScript,
  releaseClient,
  toFleetError,
  waitReady,
  watchErrors,
  type FleetCommonOptions,
  type HeldClient,
} from './redis.js';

const reason = z.string().max(200).optional();

export const controlMessageSchema = z.discriminatedUnion('type', [
  /** API hang-up: end the call now. */
  z.object({ type: z.literal('hangup'), reason }),
  /** A Twilio status callback or AMD result that landed elsewhere (its form fields). */
  z.object({ type: z.literal('status'), params: z.record(z.string(), z.string()) }),
  /** Hand the call to a person (the TransferRequest of session/callSession.ts). */
  z.object({
    type: z.literal('transfer'),
    request: z.object({
      target: z.string().max(200).optional(),
      to: z.string().max(256).optional(),
      mode: z.enum(['cold', 'warm']),
      reason: z.string().max(300).optional(),
      summary: z.string().max(4_000).optional(),
      by: z.enum(['api', 'tool', 'dtmf']),
    }),
  }),
  /**
   * A Twilio callback about a transfer (`/twilio/transfer/<id>/<kind>`) that landed on another
   * process than the one running the transfer; sent to the owner of the transfer id. Its answer's
   * `data.twiml` is the callback's answer (`action`: the caller's next TwiML).
   */
  z.object({
    type: z.literal('transfer_callback'),
    kind: z.enum(['action', 'status', 'conference']),
    params: z.partialRecord(z.enum(['DialCallStatus', 'CallStatus', 'CallSid', 'StatusCallbackEvent']), z.string().max(64)),
  }),
  /** The console's "end call" (with a goodbye). */
  z.object({ type: z.literal('end_call'), reason }),
]);
export type ControlMessage = z.infer<typeof controlMessageSchema>;

export const controlAnswerSchema = z.union([
  z.object({ ok: z.literal(true), data: z.record(z.string(), z.unknown()).optional() }),
  z.object({ ok: z.literal(false), error: z.string().max(1_000), code: z.string().max(64).optional() }),
]);
export type ControlAnswer = z.infer<typeof controlAnswerSchema>;

/** What the owner runs for a call's control messages. */
export type ControlHandler = (message: ControlMessage) => ControlAnswer | Promise<ControlAnswer>;

/** What every process may be asked at once (see `askAll`). */
export type FleetQuestion = 'live';
/** What a process answers to a question asked to every process. */
export type QuestionHandler = (question: FleetQuestion) => ControlAnswer | Promise<ControlAnswer>;

const envelopeSchema = z.discriminatedUnion('kind', [
  z.object({ v: z.literal(1), kind: z.literal('ask'), id: z.string().min(1).max(64), from: z.string().min(1).max(200), question: z.literal('live') }),
  z.object({ v: z.literal(1), kind: z.literal('request'), id: z.string().min(1).max(64), from: z.string().min(1).max(200), callSid: z.string().min(1).max(64), message: controlMessageSchema }),
  z.object({ v: z.literal(1), kind: z.literal('reply'), id: z.string().min(1).max(64), answer: controlAnswerSchema }),
]);
type Envelope = z.infer<typeof envelopeSchema>;

/** The answer code of an owner that no longer holds the call (the sender rejects with `no_owner`). */
const NOT_LIVE_HERE = 'fleet_not_live_here';

/** Deletes the owner key only while it names this process. */
const DISOWN = new LuaScript(
  'owners.disown',
  `if redis.call('GET', ARGV[1]) == ARGV[2] then return redis.call('DEL', ARGV[1]) end
return 0`,
);

/** Extends each owner key that still names this process (sets it again if it expired meanwhile); returns the callSids another process owns now. */
const REFRESH = new LuaScript(
  'owners.refresh',
  `local P, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lost = {}
for i = 4, #ARGV do
  local k = P .. 'owner:' .. ARGV[i]
  local cur = redis.call('GET', k)
  if cur == me then redis.call('PEXPIRE', k, ttl)
  elseif not cur then redis.call('SET', k, me, 'PX', ttl)
  else table.insert(lost, ARGV[i]) end
end
return lost`,
);

export interface CallOwnersOptions extends FleetCommonOptions {
  /** This process' id (default host:pid:random). */
  processId?: string;
  /** How long ownership lasts without a refresh (default 15 000 ms). */
  ttlMs?: number;
  /** How long `send` waits for the owner's answer (default 3 000 ms). */
  timeoutMs?: number;
}

interface Waiting {
  resolve(a: ControlAnswer): void;
  reject(e: FleetError): void;
  timer: NodeJS.Timeout;
}

export class CallOwners {
  readonly processId: string;
  readonly ttlMs: number;
  readonly #held: HeldClient;
  readonly #sub: Redis;
  readonly #prefix: string;
  readonly #timeoutMs: number;
  readonly #log: Logger | undefined;
  readonly #handlers = new Map<string, ControlHandler>();
  readonly #waiting = new Map<string, Waiting>();
  /** Questions asked to every process, still collecting answers. */
  readonly #gathering = new Map<string, { answers: ControlAnswer[]; expected: number; done(): void }>();
  #question: QuestionHandler | undefined;
  #started: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(opts: CallOwnersOptions) {
    this.#prefix = checkPrefix(opts.prefix ?? DEFAULT_PREFIX);
    this.#log = opts.logger?.child({ module: 'fleet.owners' });
    this.#held = holdClient(opts.redis, this.#log, 'owners');
    this.processId = opts.processId ?? defaultProcessId();
    this.ttlMs = opts.ttlMs ?? 15_000;
    this.#timeoutMs = opts.timeoutMs ?? 3_000;
    // The subscriber connection is always ours (a subscribed connection runs no other command).
    this.#sub = this.#held.client.duplicate({ ...failFastOptions(), lazyConnect: true });
    watchErrors(this.#sub, this.#log, 'owners.subscriber');
    this.#sub.on('message', (_channel: string, text: string) => this.#onMessage(text));
  }

  get #channel(): string {
    return `${this.#prefix}ctl:${this.processId}`;
  }

  get #allChannel(): string {
    return `${this.#prefix}ctl:all`;
  }

  /** What this process answers when every process is asked something (`askAll`). */
  setQuestionHandler(handler: QuestionHandler): void {
    this.#question = handler;
  }

  /**
   * Asks every other process of the fleet and resolves with the answers that came within
   * `timeoutMs` (default 1 s; a process that did not answer in time is left out). Rejects with
   * `redis_unavailable` or `closed`.
   */
  async askAll(question: FleetQuestion, opts: { timeoutMs?: number } = {}): Promise<ControlAnswer[]> {
    await this.start();
    const id = randomBytes(12).toString('base64url');
    const answers: ControlAnswer[] = [];
    let finish: () => void = () => undefined;
    const done = new Promise<void>((resolve) => {
      const timer = setTimeout(() => finish(), opts.timeoutMs ?? 1_000);
      timer.unref();
      finish = () => {
        clearTimeout(timer);
        this.#gathering.delete(id);
        resolve();
      };
    });
    this.#gathering.set(id, { answers, expected: Number.POSITIVE_INFINITY, done: () => finish() });
    const envelope: Envelope = { v: 1, kind: 'ask', id, from: this.processId, question };
    let receivers: number;
    try {
      receivers = asInt(await this.#held.client.publish(this.#allChannel, JSON.stringify(envelope)), 'owners.askAll');
    } catch (err) {
      finish();
      throw toFleetError(err, 'owners.askAll');
    }
    const g = this.#gathering.get(id);
    if (g !== undefined) {
      // Every subscriber received it, this process included (it does not answer itself).
      g.expected = receivers - 1;
      if (g.answers.length >= g.expected) finish();
    }
    await done;
    return answers;
  }

  /** Subscribes to this process' channel (idempotent); `own` and `send` call it. */
  start(): Promise<void> {
    this.#open();
    this.#started ??= (async () => {
      try {
        // Connects the lazy subscriber (or waits for its reconnection after a failed start).
        await waitReady(this.#sub);
        await this.#sub.subscribe(this.#channel, this.#allChannel);
      } catch (err) {
        this.#started = undefined;
        throw toFleetError(err, 'owners.start (subscribing to the control channel)');
      }
    })();
    return this.#started;
  }

  /** This process owns the call from now on: control messages for it run `handler`. */
  async own(callSid: string, handler: ControlHandler): Promise<void> {
    await this.start();
    this.#handlers.set(callSid, handler);
    try {
      await this.#held.client.set(this.#key(callSid), this.processId, 'PX', this.ttlMs);
    } catch (err) {
      this.#handlers.delete(callSid);
      throw toFleetError(err, 'owners.own');
    }
  }

  /** The call ended here (idempotent): its owner key goes if it still names this process. */
  async disown(callSid: string): Promise<void> {
    this.#handlers.delete(callSid);
    if (this.#closed) return;
    await DISOWN.run(this.#held.client, [this.#key(callSid), this.processId]);
  }

  /** The process owning a call now, if any. */
  async ownerOf(callSid: string): Promise<string | undefined> {
    this.#open();
    try {
      return (await this.#held.client.get(this.#key(callSid))) ?? undefined;
    } catch (err) {
      throw toFleetError(err, 'owners.ownerOf');
    }
  }

  /** Extends this process' ownerships; returns (and forgets) the calls another process owns now. */
  async refresh(): Promise<string[]> {
    this.#open();
    const calls = [...this.#handlers.keys()];
    if (calls.length === 0) return [];
    const reply = await REFRESH.run(this.#held.client, [this.#prefix, this.processId, this.ttlMs, ...calls]);
    const lost = Array.isArray(reply) ? reply.filter((x): x is string => typeof x === 'string') : [];
    for (const c of lost) this.#handlers.delete(c);
    return lost;
  }

  /** Refreshes every ttl/3 until closed. */
  startRefreshing(handlers: { onLost?(callSids: string[]): void; onError?(err: FleetError): void } = {}): void {
    this.#open();
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(
      () => {
        this.refresh().then(
          (lost) => {
            if (lost.length > 0) handlers.onLost?.(lost);
          },
          (err: unknown) => {
            if (this.#closed) return;
            const e = toFleetError(err, 'owners.refresh');
            this.#log?.warn({ err: e.message }, 'fleet: could not refresh call ownership');
            handlers.onError?.(e);
          },
        );
      },
      Math.max(10, Math.floor(this.ttlMs / 3)),
    );
    this.#timer.unref();
  }

  /**
   * Delivers a control message to the process that owns the call and resolves with its answer.
   * Rejects with FleetError `no_owner` (nobody owns it), `timeout` (the owner did not answer in
   * time), `redis_unavailable` or `closed`.
   */
  async send(callSid: string, message: ControlMessage, opts: { timeoutMs?: number } = {}): Promise<ControlAnswer> {
    const checked = controlMessageSchema.safeParse(message);
    if (!checked.success) throw new Error(`fleet: not a control message: ${checked.error.message}`);
    await this.start();
    const owner = await this.ownerOf(callSid);
    if (owner === undefined) throw new FleetError('no_owner', `fleet: no process owns call ${callSid} (it ended, or its process stopped and its ownership expired)`);
    if (owner === this.processId) {
      const answer = await this.#runHandler(callSid, checked.data);
      if (answer === undefined) throw new FleetError('no_owner', `fleet: call ${callSid} is not live on this process any more`);
      return answer;
    }
    const id = randomBytes(12).toString('base64url');
    const timeoutMs = opts.timeoutMs ?? this.#timeoutMs;
    const answer = new Promise<ControlAnswer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        reject(new FleetError('timeout', `fleet: process ${owner} did not answer the ${message.type} for call ${callSid} within ${timeoutMs} ms (busy, or stopped with its ownership not yet expired)`));
      }, timeoutMs);
      timer.unref();
      this.#waiting.set(id, { resolve, reject, timer });
    });
    // Whatever happens next, the waiting promise is settled by exactly one path: no unhandled rejection.
    answer.catch(() => undefined);
    const envelope: Envelope = { v: 1, kind: 'request', id, from: this.processId, callSid, message: checked.data };
    let receivers: number;
    try {
      receivers = asInt(await this.#held.client.publish(`${this.#prefix}ctl:${owner}`, JSON.stringify(envelope)), 'owners.send');
    } catch (err) {
      this.#settle(id, undefined, toFleetError(err, 'owners.send'));
      return answer;
    }
    if (receivers === 0) {
      this.#settle(id, undefined, new FleetError('no_owner', `fleet: call ${callSid} is owned by process ${owner}, which is not listening any more (stopped; its ownership expires within ${this.ttlMs} ms)`));
    }
    return answer;
  }

  /** Stops refreshing, rejects waiting sends, unsubscribes, and closes the connections this module opened (idempotent). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    for (const id of [...this.#waiting.keys()]) this.#settle(id, undefined, new FleetError('closed', 'fleet: call control was closed while waiting for an answer'));
    for (const g of [...this.#gathering.values()]) g.done();
    this.#handlers.clear();
    await this.#started?.catch(() => undefined);
    await releaseClient({ client: this.#sub, owned: true });
    await releaseClient(this.#held);
  }

  #settle(id: string, answer: ControlAnswer | undefined, err?: FleetError): void {
    const w = this.#waiting.get(id);
    if (w === undefined) return;
    this.#waiting.delete(id);
    clearTimeout(w.timer);
    if (answer !== undefined) w.resolve(answer);
    else w.reject(err ?? new FleetError('redis_error', 'fleet: a control reply had no answer'));
  }

  /** Runs the local handler of a call; undefined when the call has none here. */
  async #runHandler(callSid: string, message: ControlMessage): Promise<ControlAnswer | undefined> {
    const handler = this.#handlers.get(callSid);
    if (handler === undefined) return undefined;
    try {
      const answer = controlAnswerSchema.safeParse(await handler(message));
      return answer.success ? answer.data : { ok: false, error: 'the call handler gave an answer that is not a control answer' };
    } catch (err) {
      return { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
  }

  #onMessage(text: string): void {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      this.#log?.warn({ bytes: text.length }, 'fleet: dropped a control message that is not JSON');
      return;
    }
    const parsed = envelopeSchema.safeParse(json);
    if (!parsed.success) {
      this.#log?.warn({ bytes: text.length }, 'fleet: dropped a control message of an unknown shape');
      return;
    }
    const env = parsed.data;
    if (env.kind === 'ask') {
      if (env.from !== this.processId) void this.#answerQuestion(env);
      return;
    }
    if (env.kind === 'reply' && this.#gathering.has(env.id)) {
      const g = this.#gathering.get(env.id);
      g?.answers.push(env.answer);
      if (g !== undefined && g.answers.length >= g.expected) g.done();
      return;
    }
    if (env.kind === 'reply') {
      const a = env.answer;
      if (!a.ok && a.code === NOT_LIVE_HERE) this.#settle(env.id, undefined, new FleetError('no_owner', `fleet: ${a.error}`));
      else this.#settle(env.id, a);
      return;
    }
    void this.#answer(env);
  }

  async #answerQuestion(env: Extract<Envelope, { kind: 'ask' }>): Promise<void> {
    const handler = this.#question;
    let answer: ControlAnswer;
    try {
      const given = handler === undefined ? { ok: false, error: `process ${this.processId} answers no questions` } : await handler(env.question);
      const checked = controlAnswerSchema.safeParse(given);
      answer = checked.success ? checked.data : { ok: false, error: 'the question handler gave an answer that is not a control answer' };
    } catch (err) {
      answer = { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
    if (this.#closed) return;
    const reply: Envelope = { v: 1, kind: 'reply', id: env.id, answer };
    try {
      await this.#held.client.publish(`${this.#prefix}ctl:${env.from}`, JSON.stringify(reply));
    } catch (err) {
      this.#log?.warn({ err: err instanceof Error ? err.message : String(err) }, 'fleet: could not answer a question asked to every process');
    }
  }

  async #answer(env: Extract<Envelope, { kind: 'request' }>): Promise<void> {
    const answer = (await this.#runHandler(env.callSid, env.message)) ?? { ok: false as const, error: `call ${env.callSid} is not live on process ${this.processId} any more`, code: NOT_LIVE_HERE };
    if (this.#closed) return;
    const reply: Envelope = { v: 1, kind: 'reply', id: env.id, answer };
    try {
      await this.#held.client.publish(`${this.#prefix}ctl:${env.from}`, JSON.stringify(reply));
    } catch (err) {
      this.#log?.warn({ callSid: env.callSid, err: err instanceof Error ? err.message : String(err) }, 'fleet: could not answer a control message');
    }
  }

  #key(callSid: string): string {
    return `${this.#prefix}owner:${callSid}`;
  }

  #open(): void {
    if (this.#closed) throw new FleetError('closed', 'fleet: call control was closed');
  }
}
