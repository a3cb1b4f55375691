/**
 * Twilio simulator: plays the part of Twilio against a Playline bridge.
 *
 * - {@link parseTwiml}: a tolerant reader for the TwiML verbs the bridge answers with.
 * - {@link postVoiceWebhook}: the signed `POST /twilio/voice` Twilio makes when a call arrives.
 * - {@link FakeTwilioStream}: one Media Streams WebSocket, driven step by step. It checks
 *   every message the bridge sends the way Twilio does (31950/31951/31924 become
 *   `violations`), emulates Twilio's playback buffer (real-time playback, `mark`
 *   echoes, `clear`) and records what the caller heard.
 * - {@link placeCall} / {@link placeCalls}: whole calls, paced at 20 ms per frame by one
 *   drift-corrected timer per call (used by tests, `npm run call` and load benchmarks).
 *
 * Behaviour follows docs/reference of Twilio (shared/reference/twilio.md), not the bridge.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import twilio from 'twilio';
import WebSocket from 'ws';
import { base64ByteLength, isBase64 } from '../audio/base64.js';

// ---------------------------------------------------------------------------
// Ids and small helpers
// ---------------------------------------------------------------------------

const hex32 = (): string => randomBytes(16).toString('hex');
/** `CA` + 32 hex digits, like a Twilio CallSid. */
export const newCallSid = (): string => `CA${hex32()}`;
/** `AC` + 32 hex digits, like a Twilio AccountSid. */
export const newAccountSid = (): string => `AC${hex32()}`;
/** A fresh `I-Twilio-Idempotency-Token` (Twilio's look: a UUID and a time). */
export const newIdempotencyToken = (): string => `${randomUUID()}_${Date.now()}`;
/** `MZ` + 32 hex digits, like a Twilio StreamSid. */
export const newStreamSid = (): string => `MZ${hex32()}`;

/** Bytes of 8 kHz mu-law per ms. */
const BYTES_PER_MS = 8;
const FRAME_MS = 20;
const FRAME_BYTES = FRAME_MS * BYTES_PER_MS;
const MULAW_SILENCE = 0xff;
const SILENCE_FRAME_B64 = Buffer.alloc(FRAME_BYTES, MULAW_SILENCE).toString('base64');
/** Twilio discards outbound audio beyond 10 minutes buffered (31931). */
const MAX_BUFFERED_SAMPLES = 10 * 60 * 1000 * BYTES_PER_MS;
/** Violations kept per stream (the count keeps going). */
const MAX_VIOLATIONS_KEPT = 1000;

const trimSlash = (s: string): string => s.replace(/\/+$/, '');

/** `http(s)://` → `ws(s)://`; ws/wss kept. */
function toWsOrigin(bridgeUrl: string): string {
  const u = new URL(bridgeUrl);
  const proto = u.protocol === 'https:' || u.protocol === 'wss:' ? 'wss:' : 'ws:';
  return `${proto}//${u.host}`;
}

function timeoutError(what: string, ms: number): Error {
  return new Error(`twilioSim: timed out after ${ms} ms waiting for ${what}`);
}

// ---------------------------------------------------------------------------
// TwiML
// ---------------------------------------------------------------------------

export interface ParsedTwiml {
  /** `url` of the first `<Connect><Stream>` (entities decoded). `<Start><Stream>` is not a bridge stream and is ignored. */
  streamUrl?: string;
  /** `<Parameter name value>` pairs inside that `<Stream>`. */
  parameters: Record<string, string>;
  /** Text of each `<Say>`, trimmed. */
  say: string[];
  /** Each `<Dial>` target: its text, or the text of each `<Number>`/`<Sip>`/`<Client>` inside it. */
  dial: string[];
  hangup: boolean;
  reject: boolean;
  /** `reason` attribute of `<Reject>` when present. */
  rejectReason?: string;
}

const ENTITY = /&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);/g;
const NAMED: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

export function decodeXmlEntities(s: string): string {
  if (!s.includes('&')) return s;
  return s.replace(ENTITY, (whole, body: string) => {
    if (body.startsWith('#x')) return safeCodePoint(parseInt(body.slice(2), 16), whole);
    if (body.startsWith('#')) return safeCodePoint(parseInt(body.slice(1), 10), whole);
    return NAMED[body] ?? whole;
  });
}

function safeCodePoint(cp: number, fallback: string): string {
  return Number.isFinite(cp) && cp >= 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : fallback;
}

type XmlToken =
  | { kind: 'open'; name: string; attrs: Record<string, string>; selfClosing: boolean }
  | { kind: 'close'; name: string }
  | { kind: 'text'; text: string };

const ATTR = /([^\s=/>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>/]+)))?/g;

/** Tolerant XML tokenizer: enough for TwiML (prolog, comments, CDATA, quotes containing `>`). */
function* tokenizeXml(xml: string): Generator<XmlToken> {
  let i = 0;
  const n = xml.length;
  while (i < n) {
    const lt = xml.indexOf('<', i);
    if (lt < 0) {
      yield { kind: 'text', text: decodeXmlEntities(xml.slice(i)) };
      return;
    }
    if (lt > i) yield { kind: 'text', text: decodeXmlEntities(xml.slice(i, lt)) };
    if (xml.startsWith('<!--', lt)) {
      const end = xml.indexOf('-->', lt + 4);
      i = end < 0 ? n : end + 3;
      continue;
    }
    if (xml.startsWith('<![CDATA[', lt)) {
      const end = xml.indexOf(']]>', lt + 9);
      yield { kind: 'text', text: xml.slice(lt + 9, end < 0 ? n : end) };
      i = end < 0 ? n : end + 3;
      continue;
    }
    if (xml.startsWith('<?', lt)) {
      const end = xml.indexOf('?>', lt + 2);
      i = end < 0 ? n : end + 2;
      continue;
    }
    // Find the closing '>' of this tag, skipping quoted attribute values.
    let j = lt + 1;
    let quote = '';
    for (; j < n; j++) {
      const c = xml[j];
      if (quote) {
        if (c === quote) quote = '';
      } else if (c === '"' || c === "'") {
        quote = c;
      } else if (c === '>') {
        break;
      }
    }
    const inner = xml.slice(lt + 1, j);
    i = j + 1;
    if (inner.startsWith('!')) continue; // DOCTYPE and friends
    if (inner.startsWith('/')) {
      yield { kind: 'close', name: localName(inner.slice(1).trim()) };
      continue;
    }
    const selfClosing = /\/\s*$/.test(inner);
    const body = selfClosing ? inner.replace(/\/\s*$/, '') : inner;
    const m = /^\s*([^\s/>]+)/.exec(body);
    if (!m || m[1] === undefined) continue;
    const attrs: Record<string, string> = {};
    const rest = body.slice(m[0].length);
    ATTR.lastIndex = 0;
    for (let a = ATTR.exec(rest); a !== null; a = ATTR.exec(rest)) {
      const name = a[1];
      if (name === undefined) continue;
      attrs[localName(name)] = decodeXmlEntities(a[2] ?? a[3] ?? a[4] ?? '');
    }
    yield { kind: 'open', name: localName(m[1]), attrs, selfClosing };
  }
}

/** Drops a namespace prefix and lower-cases, so `<Say>`, `<say>` and `<t:Say>` match. */
function localName(name: string): string {
  const c = name.lastIndexOf(':');
  return (c >= 0 ? name.slice(c + 1) : name).toLowerCase();
}

/**
 * Reads the TwiML verbs a bridge answers with: `<Connect><Stream url><Parameter/>`,
 * `<Say>`, `<Dial>`, `<Hangup/>`, `<Reject/>`. Never throws; unknown tags are skipped.
 */
export function parseTwiml(xml: string): ParsedTwiml {
  const out: ParsedTwiml = { parameters: {}, say: [], dial: [], hangup: false, reject: false };
  const stack: string[] = [];
  let streamDepth = -1; // stack depth of the <Connect><Stream> we read parameters from
  let sayText: string | undefined;
  let dialText: string | undefined;
  let dialHadChild = false;
  let childText: string | undefined;

  for (const tok of tokenizeXml(xml)) {
    if (tok.kind === 'text') {
      if (childText !== undefined) childText += tok.text;
      else if (sayText !== undefined) sayText += tok.text;
      else if (dialText !== undefined) dialText += tok.text;
      continue;
    }
    if (tok.kind === 'open') {
      const { name, attrs } = tok;
      const parent = stack[stack.length - 1];
      switch (name) {
        case 'stream':
          if (parent === 'connect' && out.streamUrl === undefined && attrs.url !== undefined) {
            out.streamUrl = attrs.url.trim();
            streamDepth = stack.length + 1;
          }
          break;
        case 'parameter':
          if (parent === 'stream' && stack.length === streamDepth && attrs.name !== undefined) {
            out.parameters[attrs.name] = attrs.value ?? '';
          }
          break;
        case 'say':
          if (tok.selfClosing) out.say.push('');
          else sayText = '';
          break;
        case 'dial':
          if (tok.selfClosing) break;
          dialText = '';
          dialHadChild = false;
          break;
        case 'number':
        case 'sip':
        case 'client':
          if (dialText !== undefined && !tok.selfClosing) {
            childText = '';
            dialHadChild = true;
          }
          break;
        case 'hangup':
          out.hangup = true;
          break;
        case 'reject':
          out.reject = true;
          if (attrs.reason !== undefined) out.rejectReason = attrs.reason;
          break;
        default:
          break;
      }
      if (!tok.selfClosing) stack.push(name);
      continue;
    }
    // close tag: pop up to the matching open tag (tolerates unclosed children)
    const idx = stack.lastIndexOf(tok.name);
    if (idx < 0) continue;
    stack.length = idx;
    switch (tok.name) {
      case 'say':
        if (sayText !== undefined) out.say.push(sayText.trim());
        sayText = undefined;
        break;
      case 'number':
      case 'sip':
      case 'client':
        if (childText !== undefined && childText.trim() !== '') out.dial.push(childText.trim());
        childText = undefined;
        break;
      case 'dial':
        if (!dialHadChild && dialText !== undefined && dialText.trim() !== '') out.dial.push(dialText.trim());
        dialText = undefined;
        break;
      case 'stream':
        if (stack.length < streamDepth) streamDepth = -1;
        break;
      default:
        break;
    }
    if (streamDepth > stack.length) streamDepth = -1;
  }
  return out;
}

// ---------------------------------------------------------------------------
// TwiML as a sequence of verbs (what the carrier simulator executes)
// ---------------------------------------------------------------------------

/** A `<Number>`, `<Sip>` or `<Client>` noun of `<Dial>`, or the bare text of `<Dial>` (kind `number`, or `sip` for a `sip:` URI). */
export interface DialEndpointNoun {
  kind: 'number' | 'sip' | 'client';
  /** The number, SIP URI or client name, trimmed. */
  value: string;
  statusCallback?: string;
  /** `statusCallbackEvent` split on spaces/commas (Twilio's default when a callback is set: `completed`). */
  statusCallbackEvents: string[];
  statusCallbackMethod?: string;
  /** `url`: TwiML the called party hears before the bridge (recorded, not fetched). */
  url?: string;
}

/** A `<Conference>` noun of `<Dial>`. Booleans hold Twilio's defaults when the attribute is absent. */
export interface DialConferenceNoun {
  kind: 'conference';
  /** The room's friendly name (the noun's text). */
  name: string;
  /** Default true. */
  startConferenceOnEnter: boolean;
  /** Default false. */
  endConferenceOnExit: boolean;
  /** `true` | `false` | `onEnter` | `onExit`; default `true`. */
  beep: string;
  /** Absent: Twilio's default hold music; `''`: silence. */
  waitUrl?: string;
  waitMethod?: string;
  muted: boolean;
  statusCallback?: string;
  /** `statusCallbackEvent` split on spaces/commas (start end join leave mute hold modify speaker announcement). */
  statusCallbackEvents: string[];
  statusCallbackMethod?: string;
  maxParticipants?: number;
}

export type DialNoun = DialEndpointNoun | DialConferenceNoun;

export interface DialVerb {
  verb: 'dial';
  action?: string;
  /** Method of `action` (default POST). */
  method: string;
  /** Seconds to ring (Twilio default 30). */
  timeoutS: number;
  callerId?: string;
  answerOnBridge: boolean;
  /** Seconds (Twilio default 14 400). */
  timeLimitS?: number;
  hangupOnStar: boolean;
  record?: string;
  /** Nouns in order; a bare `<Dial>number</Dial>` gives one `number` (or `sip`) noun. */
  nouns: DialNoun[];
}

export interface ConnectStreamVerb {
  verb: 'connect';
  /** `<Connect action>`: requested when the stream ends; its TwiML runs next. */
  action?: string;
  method: string;
  /** `<Stream url>`; absent for `<Connect>` without a stream (e.g. `<ConversationRelay>`, not simulated). */
  streamUrl?: string;
  streamName?: string;
  streamStatusCallback?: string;
  parameters: Record<string, string>;
}

export type TwimlVerb =
  | { verb: 'say'; text: string; voice?: string; language?: string; loop: number }
  | { verb: 'play'; url: string; loop: number; digits?: string }
  | { verb: 'pause'; lengthS: number }
  | { verb: 'hangup' }
  | { verb: 'reject'; reason: 'busy' | 'rejected' }
  | { verb: 'redirect'; url: string; method: string }
  | ConnectStreamVerb
  | DialVerb
  /** A verb the simulator does not execute (`<Gather>`, `<Record>`, `<Start>`, …): skipped, recorded. */
  | { verb: 'other'; name: string };

const splitEvents = (s: string | undefined): string[] => (s === undefined ? [] : s.split(/[\s,]+/).filter((e) => e !== ''));
const boolAttr = (s: string | undefined, dflt: boolean): boolean => (s === undefined ? dflt : s.trim().toLowerCase() === 'true');
const numAttr = (s: string | undefined): number | undefined => {
  if (s === undefined || s.trim() === '') return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : undefined;
};

/**
 * Reads a TwiML document as the list of its top-level verbs, in order, with the
 * attributes the simulator acts on (`<Say>`, `<Play>`, `<Pause>`, `<Hangup>`,
 * `<Reject>`, `<Redirect>`, `<Connect><Stream>`, `<Dial>` with `<Number>`,
 * `<Sip>`, `<Client>`, `<Conference>` or a bare number). Never throws; unknown
 * verbs come back as `other`. Attribute names are matched case-sensitively
 * and tag names case-insensitively (the tokenizer lower-cases them).
 */
export function parseTwimlVerbs(xml: string): TwimlVerb[] {
  const out: TwimlVerb[] = [];
  const stack: string[] = [];
  let text: string | undefined;
  let current: TwimlVerb | undefined;
  let noun: { kind: DialNoun['kind']; attrs: Record<string, string>; text: string } | undefined;
  let dialText = '';
  let inResponse = false;

  const finishNoun = (): void => {
    if (noun === undefined || current?.verb !== 'dial') return;
    const value = noun.text.trim();
    const a = noun.attrs;
    if (noun.kind === 'conference') {
      const waitUrl = a.waiturl;
      current.nouns.push({
        kind: 'conference',
        name: value,
        startConferenceOnEnter: boolAttr(a.startconferenceonenter, true),
        endConferenceOnExit: boolAttr(a.endconferenceonexit, false),
        beep: a.beep ?? 'true',
        ...(waitUrl !== undefined ? { waitUrl: waitUrl.trim() } : {}),
        ...(a.waitmethod !== undefined ? { waitMethod: a.waitmethod } : {}),
        muted: boolAttr(a.muted, false),
        ...(a.statuscallback !== undefined ? { statusCallback: a.statuscallback } : {}),
        statusCallbackEvents: splitEvents(a.statuscallbackevent),
        ...(a.statuscallbackmethod !== undefined ? { statusCallbackMethod: a.statuscallbackmethod } : {}),
        ...(numAttr(a.maxparticipants) !== undefined ? { maxParticipants: numAttr(a.maxparticipants) } : {}),
      });
    } else if (value !== '') {
      current.nouns.push({
        kind: noun.kind,
        value,
        ...(a.statuscallback !== undefined ? { statusCallback: a.statuscallback } : {}),
        statusCallbackEvents: splitEvents(a.statuscallbackevent),
        ...(a.statuscallbackmethod !== undefined ? { statusCallbackMethod: a.statuscallbackmethod } : {}),
        ...(a.url !== undefined ? { url: a.url } : {}),
      });
    }
    noun = undefined;
  };

  for (const tok of tokenizeXml(xml)) {
    if (tok.kind === 'text') {
      if (noun !== undefined) noun.text += tok.text;
      else if (text !== undefined) text += tok.text;
      else if (current?.verb === 'dial') dialText += tok.text;
      continue;
    }
    const depth = stack.length;
    if (tok.kind === 'open') {
      const { name, attrs } = tok;
      if (name === 'response' && depth === 0) {
        inResponse = true;
      } else if (inResponse && depth === 1) {
        // A top-level verb.
        switch (name) {
          case 'say':
            current = { verb: 'say', text: '', loop: Math.max(0, numAttr(attrs.loop) ?? 1), ...(attrs.voice !== undefined ? { voice: attrs.voice } : {}), ...(attrs.language !== undefined ? { language: attrs.language } : {}) };
            text = '';
            break;
          case 'play':
            current = { verb: 'play', url: '', loop: Math.max(0, numAttr(attrs.loop) ?? 1), ...(attrs.digits !== undefined ? { digits: attrs.digits } : {}) };
            text = '';
            break;
          case 'pause':
            current = { verb: 'pause', lengthS: Math.max(0, numAttr(attrs.length) ?? 1) };
            break;
          case 'hangup':
            current = { verb: 'hangup' };
            break;
          case 'reject':
            current = { verb: 'reject', reason: attrs.reason === 'busy' ? 'busy' : 'rejected' };
            break;
          case 'redirect':
            current = { verb: 'redirect', url: '', method: attrs.method ?? 'POST' };
            text = '';
            break;
          case 'connect':
            current = { verb: 'connect', method: attrs.method ?? 'POST', parameters: {}, ...(attrs.action !== undefined ? { action: attrs.action } : {}) };
            break;
          case 'dial': {
            const timeLimitS = numAttr(attrs.timelimit);
            current = {
              verb: 'dial',
              method: attrs.method ?? 'POST',
              timeoutS: Math.max(0, numAttr(attrs.timeout) ?? 30),
              answerOnBridge: boolAttr(attrs.answeronbridge, false),
              hangupOnStar: boolAttr(attrs.hanguponstar, false),
              nouns: [],
              ...(attrs.action !== undefined ? { action: attrs.action } : {}),
              ...(attrs.callerid !== undefined ? { callerId: attrs.callerid } : {}),
              ...(timeLimitS !== undefined ? { timeLimitS } : {}),
              ...(attrs.record !== undefined ? { record: attrs.record } : {}),
            };
            dialText = '';
            break;
          }
          default:
            current = { verb: 'other', name };
            break;
        }
        if (tok.selfClosing) {
          if (current !== undefined) out.push(finishVerb(current, text, dialText));
          current = undefined;
          text = undefined;
        }
      } else if (current !== undefined && depth === 2) {
        if (current.verb === 'connect' && name === 'stream' && current.streamUrl === undefined && attrs.url !== undefined) {
          current.streamUrl = attrs.url.trim();
          if (attrs.name !== undefined) current.streamName = attrs.name;
          if (attrs.statuscallback !== undefined) current.streamStatusCallback = attrs.statuscallback;
        } else if (current.verb === 'dial' && (name === 'number' || name === 'sip' || name === 'client' || name === 'conference')) {
          noun = { kind: name, attrs, text: '' };
          if (tok.selfClosing) finishNoun();
        }
      } else if (current?.verb === 'connect' && depth === 3 && name === 'parameter' && stack[2] === 'stream' && attrs.name !== undefined) {
        current.parameters[attrs.name] = attrs.value ?? '';
      }
      if (!tok.selfClosing) stack.push(name);
      continue;
    }
    // close tag
    const idx = stack.lastIndexOf(tok.name);
    if (idx < 0) continue;
    stack.length = idx;
    if (idx === 2 && noun !== undefined) finishNoun();
    if (idx === 1 && current !== undefined) {
      if (noun !== undefined) finishNoun();
      out.push(finishVerb(current, text, dialText));
      current = undefined;
      text = undefined;
    }
    if (idx === 0) inResponse = false;
  }
  return out;
}

function finishVerb(v: TwimlVerb, text: string | undefined, dialText: string): TwimlVerb {
  switch (v.verb) {
    case 'say':
      return { ...v, text: (text ?? '').trim() };
    case 'play':
      return { ...v, url: (text ?? '').trim() };
    case 'redirect':
      return { ...v, url: (text ?? '').trim() };
    case 'dial': {
      const bare = dialText.trim();
      if (v.nouns.length === 0 && bare !== '') return { ...v, nouns: [{ kind: /^sips?:/i.test(bare) ? 'sip' : 'number', value: bare, statusCallbackEvents: [] }] };
      return v;
    }
    default:
      return v;
  }
}

// ---------------------------------------------------------------------------
// Voice webhook and status callback
// ---------------------------------------------------------------------------

export interface VoiceWebhookOptions {
  /** Address the simulator actually connects to, e.g. `http://127.0.0.1:8080`. */
  bridgeUrl: string;
  /** Public origin the bridge signs against (`PUBLIC_URL`); defaults to `bridgeUrl`. */
  publicUrl?: string;
  /** Twilio auth token: when set, the request carries a valid `X-Twilio-Signature`. */
  authToken?: string;
  /** Overrides/extra form fields. A key set to `undefined` removes that default field. */
  params?: Partial<Record<string, string>>;
  /** Sends this `X-Twilio-Signature` instead of computing one (e.g. a forged one). */
  signature?: string;
  /** Request timeout, default 15 000 ms (Twilio's own limit, 31408). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /**
   * Path and query to request, default `/twilio/voice`, e.g. `/twilio/voice?callId=abc`.
   * The signature covers the public URL with this path and query, as Twilio signs.
   */
  path?: string;
  /**
   * `I-Twilio-Idempotency-Token`: Twilio sends a fresh one with every webhook and the same
   * one when it retries that request. Default: a fresh random token; `false` sends none.
   */
  idempotencyToken?: string | false;
}

export interface VoiceWebhookResult {
  status: number;
  body: string;
  /** Parsed TwiML when the answer is 2xx and looks like TwiML. */
  twiml: ReturnType<typeof parseTwiml> | undefined;
  /** The form fields that were sent. */
  params: Record<string, string>;
}

function mergeParams(defaults: Record<string, string>, overrides: Partial<Record<string, string>> | undefined): Record<string, string> {
  const out: Record<string, string> = { ...defaults };
  if (overrides) {
    for (const [k, v] of Object.entries(overrides)) {
      if (v === undefined) delete out[k];
      else out[k] = v;
    }
  }
  return out;
}

async function postSignedForm(
  url: string,
  signedUrl: string,
  params: Record<string, string>,
  authToken: string | undefined,
  signature: string | undefined,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  idempotencyToken: string | false = newIdempotencyToken(),
): Promise<{ status: number; body: string; contentType: string }> {
  const headers: Record<string, string> = {
    'content-type': 'application/x-www-form-urlencoded',
    'user-agent': 'TwilioProxy/1.1 (playline-sim)',
  };
  if (idempotencyToken !== false) headers['i-twilio-idempotency-token'] = idempotencyToken;
  const sig = signature ?? (authToken !== undefined ? twilio.getExpectedTwilioSignature(authToken, signedUrl, params) : undefined);
  if (sig !== undefined) headers['x-twilio-signature'] = sig;
  const timeout = AbortSignal.timeout(timeoutMs);
  const res = await fetch(url, {
    method: 'POST',
    headers,
    body: new URLSearchParams(params).toString(),
    signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
  });
  const body = await res.text();
  return { status: res.status, body, contentType: res.headers.get('content-type') ?? '' };
}

/** Twilio's `POST /twilio/voice` for an incoming call. Network errors reject. */
export async function postVoiceWebhook(opts: VoiceWebhookOptions): Promise<VoiceWebhookResult> {
  const from = opts.params?.From ?? '+15005550006';
  const to = opts.params?.To ?? '+15005550001';
  const params = mergeParams(
    {
      CallSid: newCallSid(),
      AccountSid: newAccountSid(),
      From: from,
      To: to,
      Caller: from,
      Called: to,
      CallStatus: 'ringing',
      Direction: 'inbound',
      ApiVersion: '2010-04-01',
    },
    opts.params,
  );
  const path = opts.path ?? '/twilio/voice';
  const publicUrl = trimSlash(opts.publicUrl ?? opts.bridgeUrl);
  const r = await postSignedForm(
    trimSlash(opts.bridgeUrl) + path,
    publicUrl + path,
    params,
    opts.authToken,
    opts.signature,
    opts.timeoutMs ?? 15_000,
    opts.signal,
    opts.idempotencyToken,
  );
  const looksLikeTwiml = r.status >= 200 && r.status < 300 && /<\s*Response[\s>/]/i.test(r.body);
  return { status: r.status, body: r.body, twiml: looksLikeTwiml ? parseTwiml(r.body) : undefined, params };
}

export interface StatusCallbackOptions {
  bridgeUrl: string;
  publicUrl?: string;
  authToken?: string;
  /** Full field set; see {@link placeCall} for what it sends. */
  params: Record<string, string>;
  signature?: string;
  timeoutMs?: number;
  /** Path and query, default `/twilio/status` (e.g. `/twilio/status?callId=abc`); signed with the query. */
  path?: string;
}

/** Twilio's signed call status callback, `POST /twilio/status`. Network errors reject. */
export async function postStatusCallback(opts: StatusCallbackOptions): Promise<{ status: number; body: string }> {
  const path = opts.path ?? '/twilio/status';
  const r = await postSignedForm(
    trimSlash(opts.bridgeUrl) + path,
    trimSlash(opts.publicUrl ?? opts.bridgeUrl) + path,
    opts.params,
    opts.authToken,
    opts.signature,
    opts.timeoutMs ?? 15_000,
    undefined,
  );
  return { status: r.status, body: r.body };
}

// ---------------------------------------------------------------------------
// Media stream
// ---------------------------------------------------------------------------

export interface FakeTwilioStreamConnectOptions {
  /** Address the simulator actually connects to (`http://…` or `ws://…`); only its origin is used. */
  bridgeUrl: string;
  /** `<Stream url>` exactly as written in the TwiML: its path is used, the whole string is signed. */
  streamUrl: string;
  authToken?: string;
  /** Override of `x-twilio-signature`; `null` sends no header. */
  signature?: string | null;
  /** Echo marks automatically when their audio has played (default true). */
  autoEchoMarks?: boolean;
  /** Keep every message in `received` and every payload in `mediaPayloads` (default true). */
  recordMessages?: boolean;
  /** WebSocket handshake timeout, default 10 000 ms (Twilio: 31901). */
  handshakeTimeoutMs?: number;
  /** Keep received audio for `heard()` (default true; turn off for big load runs: `heard()` is then silence). */
  recordHeard?: boolean;
  /** Called with every valid `media` payload from the bridge and its arrival time (`performance.now()`). For load benchmarks. */
  onMedia?: (payload: string, nowMs: number) => void;
  /** Called on every valid `clear` from the bridge with its arrival time (`performance.now()`). */
  onClear?: (nowMs: number) => void;
}

export interface ReceivedRecord {
  /** ms since the WebSocket opened. */
  at: number;
  msg: unknown;
  raw: string | Buffer;
}

/** A refused or failed WebSocket upgrade; `status` is the HTTP status when there was one. */
export class StreamConnectError extends Error {
  override name = 'StreamConnectError';
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

interface Segment {
  /** first sample (8 kHz, relative to the `start` message) at which it plays */
  start: number;
  /** samples of the payload that play (less than the payload after a `clear`) */
  len: number;
  payload: string;
}

interface PendingMark {
  name: string;
  /** sample at which all audio queued before it has played */
  due: number;
}

interface Waiter {
  pred: (s: FakeTwilioStream) => boolean;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

type Outbound = { kind: 'media'; payload: string } | { kind: 'mark'; name: string } | { kind: 'clear' } | { kind: 'violation'; text: string };

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** First key of `o` outside `allowed`, if any. */
function extraKey(o: Record<string, unknown>, allowed: readonly string[]): string | undefined {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) return k;
  return undefined;
}

/** Checks one text frame the bridge sent against what Twilio accepts on a bidirectional stream. */
function checkOutbound(text: string, streamSid: string | undefined): Outbound {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { kind: 'violation', text: '31951 invalid JSON' };
  }
  if (!isPlainObject(v)) return { kind: 'violation', text: '31951 message is not a JSON object' };
  const ev = v.event;
  const bad = (why: string): Outbound => ({ kind: 'violation', text: `31951 ${typeof ev === 'string' ? ev : '?'}: ${why}` });
  if (ev !== 'media' && ev !== 'mark' && ev !== 'clear') {
    return { kind: 'violation', text: `31951 unknown event ${JSON.stringify(ev)?.slice(0, 40) ?? 'undefined'}` };
  }
  const top = ev === 'clear' ? ['event', 'streamSid'] : ['event', 'streamSid', ev];
  const extra = extraKey(v, top);
  if (extra !== undefined) return bad(`extra field ${JSON.stringify(extra)}`);
  if (typeof v.streamSid !== 'string') return bad('missing streamSid');
  if (streamSid === undefined) return bad('sent before start (no streamSid yet)');
  if (v.streamSid !== streamSid) return bad(`wrong streamSid ${JSON.stringify(v.streamSid.slice(0, 40))}`);
  if (ev === 'clear') return { kind: 'clear' };
  const body = v[ev];
  if (!isPlainObject(body)) return bad(`missing ${ev} object`);
  if (ev === 'media') {
    const x = extraKey(body, ['payload']);
    if (x !== undefined) return bad(`extra field ${JSON.stringify(`media.${x}`)}`);
    if (typeof body.payload !== 'string') return bad('missing media.payload');
    if (!isBase64(body.payload)) return { kind: 'violation', text: '31924 media: payload is not base64' };
    return { kind: 'media', payload: body.payload };
  }
  const x = extraKey(body, ['name']);
  if (x !== undefined) return bad(`extra field ${JSON.stringify(`mark.${x}`)}`);
  if (typeof body.name !== 'string') return bad('missing mark.name');
  return { kind: 'mark', name: body.name };
}

/**
 * One Media Streams WebSocket, acting as Twilio. Low level: nothing is sent until you
 * call a `send*` method. Times (`received[].at`, `startSentAt`, ...) are ms since the
 * socket opened; the playback/heard timeline starts when `start` is sent.
 */
export class FakeTwilioStream {
  readonly received: ReceivedRecord[] = [];
  /** Valid `media` payloads from the bridge, in order (when `recordMessages`). */
  readonly mediaPayloads: string[] = [];
  /** Names of valid `mark`s received from the bridge, in order. */
  readonly marks: string[] = [];
  /** Names of marks echoed back to the bridge, in order. */
  readonly echoedMarks: string[] = [];
  /** Protocol violations by the bridge (Twilio would log 31950/31951/31924/31931). */
  readonly violations: string[] = [];
  violationCount = 0;
  clears = 0;
  mediaReceived = 0;
  bytesReceived = 0;
  /** Messages this simulator sent (all kinds, `connected` included). */
  messagesSent = 0;
  framesSent = 0;
  bytesSent = 0;
  streamSid: string | undefined;
  callSid: string | undefined;
  accountSid: string | undefined;
  startSentAt: number | undefined;
  stopSentAt: number | undefined;
  firstMediaAt: number | undefined;
  closed = false;
  closeCode: number | undefined;
  closeReason = '';
  closedAt: number | undefined;
  /** Resolves once the socket is closed (never rejects). */
  readonly whenClosed: Promise<{ code: number; reason: string }>;
  autoEchoMarks: boolean;

  readonly #ws: WebSocket;
  readonly #openedAt: number;
  readonly #record: boolean;
  readonly #recordHeard: boolean;
  readonly #mediaHook: ((payload: string, nowMs: number) => void) | undefined;
  readonly #clearHook: ((nowMs: number) => void) | undefined;
  #seq = 0;
  #chunk = 0;
  /** JSON-encoded streamSid, computed once at start. */
  #sidJson = '""';
  #segments: Segment[] = [];
  /** Sample (relative to start) at which the queued audio finishes. */
  #playEnd = 0;
  #pending: PendingMark[] = [];
  #markTimer: NodeJS.Timeout | undefined;
  #waiters = new Set<Waiter>();
  #overflowReported = false;
  #resolveClosed!: (v: { code: number; reason: string }) => void;

  private constructor(ws: WebSocket, autoEchoMarks: boolean, record: boolean, hooks: Pick<FakeTwilioStreamConnectOptions, 'recordHeard' | 'onMedia' | 'onClear'> = {}) {
    this.#ws = ws;
    this.#openedAt = performance.now();
    this.autoEchoMarks = autoEchoMarks;
    this.#record = record;
    this.#recordHeard = hooks.recordHeard ?? true;
    this.#mediaHook = hooks.onMedia;
    this.#clearHook = hooks.onClear;
    this.whenClosed = new Promise((resolve) => (this.#resolveClosed = resolve));
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    ws.on('close', (code, reason) => this.#onClose(code, reason.toString()));
    ws.on('error', () => {
      /* a 'close' always follows */
    });
  }

  /**
   * Opens the socket to the bridge's real address with the path of `streamUrl`, signed
   * over `streamUrl` exactly. A refused upgrade rejects with a {@link StreamConnectError}
   * whose `status` is the HTTP status (e.g. 403).
   */
  static connect(opts: FakeTwilioStreamConnectOptions): Promise<FakeTwilioStream> {
    const origin = toWsOrigin(opts.bridgeUrl);
    const target = new URL(opts.streamUrl, origin.replace(/^ws/, 'http'));
    const url = origin + target.pathname + target.search;
    const headers: Record<string, string> = {};
    const sig =
      opts.signature === null
        ? undefined
        : (opts.signature ?? (opts.authToken !== undefined ? twilio.getExpectedTwilioSignature(opts.authToken, opts.streamUrl, {}) : undefined));
    if (sig !== undefined) headers['x-twilio-signature'] = sig;

    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(url, {
        headers,
        perMessageDeflate: false,
        handshakeTimeout: opts.handshakeTimeoutMs ?? 10_000,
      });
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        reject(err);
      };
      ws.on('unexpected-response', (req, res) => {
        const status = res.statusCode ?? 0;
        res.resume();
        fail(new StreamConnectError(`twilioSim: WebSocket upgrade to ${url} refused with HTTP ${status}`, status));
        req.destroy();
        ws.terminate();
      });
      ws.on('error', (err) => fail(new StreamConnectError(`twilioSim: WebSocket to ${url} failed: ${err.message}`)));
      ws.on('close', () => fail(new StreamConnectError(`twilioSim: WebSocket to ${url} closed during the handshake`)));
      ws.once('open', () => {
        if (settled) return;
        settled = true;
        resolve(new FakeTwilioStream(ws, opts.autoEchoMarks ?? true, opts.recordMessages ?? true, opts));
      });
    });
  }

  /** ms since the socket opened. */
  now(): number {
    return performance.now() - this.#openedAt;
  }

  // ---- sending -----------------------------------------------------------

  #send(data: string | Buffer): void {
    if (this.#ws.readyState !== WebSocket.OPEN) return;
    this.#ws.send(data);
    this.messagesSent++;
  }

  sendConnected(): void {
    this.#send('{"event":"connected","protocol":"Call","version":"1.0.0"}');
  }

  /** Sends `start` (sequenceNumber "1"); ids not given are generated. Starts the playback clock. */
  sendStart(opts: { callSid?: string; streamSid?: string; accountSid?: string; customParameters?: Record<string, string> } = {}): void {
    this.streamSid = opts.streamSid ?? newStreamSid();
    this.callSid = opts.callSid ?? newCallSid();
    this.accountSid = opts.accountSid ?? newAccountSid();
    this.#sidJson = JSON.stringify(this.streamSid);
    this.#seq = 1;
    this.#chunk = 0;
    this.startSentAt = this.now();
    this.#playEnd = 0;
    this.#send(
      JSON.stringify({
        event: 'start',
        sequenceNumber: '1',
        streamSid: this.streamSid,
        start: {
          accountSid: this.accountSid,
          streamSid: this.streamSid,
          callSid: this.callSid,
          tracks: ['inbound'],
          customParameters: { ...(opts.customParameters ?? {}) },
          mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
        },
      }),
    );
  }

  /**
   * Sends one inbound `media` frame (default: 20 ms of silence). `timestampMs` is the
   * media timestamp (default: ms since `start`, rounded).
   */
  sendMedia(payloadB64: string = SILENCE_FRAME_B64, timestampMs?: number): void {
    const seq = ++this.#seq;
    const chunk = ++this.#chunk;
    const ts = timestampMs ?? Math.max(0, Math.round(this.now() - (this.startSentAt ?? 0)));
    this.#send(
      `{"event":"media","sequenceNumber":"${seq}","streamSid":${this.#sidJson},"media":{"track":"inbound","chunk":"${chunk}","timestamp":"${ts}","payload":"${payloadB64}"}}`,
    );
    this.framesSent++;
    this.bytesSent += base64ByteLength(payloadB64);
  }

  sendDtmf(digit: string): void {
    const seq = ++this.#seq;
    this.#send(JSON.stringify({ event: 'dtmf', sequenceNumber: String(seq), streamSid: this.streamSid, dtmf: { track: 'inbound_track', digit } }));
  }

  /** Sends `stop` (the caller hung up). Marks pending after this are never echoed. */
  sendStop(): void {
    const seq = ++this.#seq;
    this.stopSentAt = this.now();
    this.#clearMarkTimer();
    this.#send(
      JSON.stringify({ event: 'stop', sequenceNumber: String(seq), streamSid: this.streamSid, stop: { accountSid: this.accountSid, callSid: this.callSid } }),
    );
  }

  /** Sends anything as is (a Buffer goes as a binary frame). */
  sendRaw(data: string | Buffer): void {
    this.#send(data);
  }

  close(code = 1000, reason?: string): void {
    if (this.closed) return;
    try {
      this.#ws.close(code, reason);
    } catch {
      this.#ws.terminate();
    }
  }

  terminate(): void {
    this.#ws.terminate();
  }

  // ---- receiving ---------------------------------------------------------

  #violation(text: string): void {
    this.violationCount++;
    if (this.violations.length < MAX_VIOLATIONS_KEPT) this.violations.push(text);
  }

  #onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    const at = this.now();
    if (isBinary) {
      const raw = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      if (this.#record) this.received.push({ at, msg: undefined, raw });
      // Twilio reports 31950 once per stream; we record each so tests see counts.
      this.#violation(`31950 binary frame (${raw.length} bytes)`);
      this.#notify();
      return;
    }
    const text = data.toString();
    const r = checkOutbound(text, this.streamSid);
    if (this.#record) {
      let msg: unknown;
      try {
        msg = JSON.parse(text);
      } catch {
        msg = undefined;
      }
      this.received.push({ at, msg, raw: text });
    }
    if (this.stopSentAt !== undefined) {
      // Call is over: Twilio has torn the stream down; nothing plays any more.
      this.#notify();
      return;
    }
    switch (r.kind) {
      case 'violation':
        this.#violation(r.text);
        break;
      case 'media':
        this.#onMedia(r.payload, at);
        break;
      case 'mark':
        this.#onMark(r.name, at);
        break;
      case 'clear':
        this.#onClear(at);
        break;
    }
    this.#notify();
  }

  /** Sample index (8 kHz, relative to start) for a time in ms since open. */
  #sampleAt(at: number): number {
    return Math.max(0, Math.floor((at - (this.startSentAt ?? 0)) * BYTES_PER_MS));
  }

  #onMedia(payload: string, at: number): void {
    const len = base64ByteLength(payload);
    this.mediaReceived++;
    this.bytesReceived += len;
    if (this.firstMediaAt === undefined) this.firstMediaAt = at;
    if (this.#record) this.mediaPayloads.push(payload);
    if (this.#mediaHook !== undefined) this.#mediaHook(payload, this.#openedAt + at);
    if (len === 0) return;
    const nowS = this.#sampleAt(at);
    const start = Math.max(nowS, this.#playEnd);
    if (start + len - nowS > MAX_BUFFERED_SAMPLES) {
      if (!this.#overflowReported) this.#violation('31931 more than 10 minutes of audio buffered; audio discarded');
      this.#overflowReported = true;
      return;
    }
    if (this.#recordHeard) this.#segments.push({ start, len, payload });
    this.#playEnd = start + len;
  }

  #onMark(name: string, at: number): void {
    this.marks.push(name);
    const nowS = this.#sampleAt(at);
    if (this.autoEchoMarks && this.#pending.length === 0 && this.#playEnd <= nowS) {
      this.#echo(name);
      return;
    }
    this.#pending.push({ name, due: this.#playEnd });
    if (this.autoEchoMarks) this.#armMarkTimer();
  }

  #onClear(at: number): void {
    this.clears++;
    if (this.#clearHook !== undefined) this.#clearHook(this.#openedAt + at);
    const cut = this.#sampleAt(at);
    // Drop everything that has not played yet.
    const segs = this.#segments;
    while (segs.length > 0) {
      const last = segs[segs.length - 1];
      if (last === undefined || last.start + last.len <= cut) break;
      if (last.start >= cut) segs.pop();
      else {
        last.len = cut - last.start;
        break;
      }
    }
    if (this.#playEnd > cut) this.#playEnd = cut;
    // Every pending mark comes back at once, played or not.
    this.#clearMarkTimer();
    const pending = this.#pending;
    this.#pending = [];
    for (const m of pending) this.#echo(m.name);
  }

  #echo(name: string): void {
    const seq = ++this.#seq;
    this.echoedMarks.push(name);
    this.#send(`{"event":"mark","sequenceNumber":"${seq}","streamSid":${this.#sidJson},"mark":{"name":${JSON.stringify(name)}}}`);
  }

  #clearMarkTimer(): void {
    if (this.#markTimer !== undefined) clearTimeout(this.#markTimer);
    this.#markTimer = undefined;
  }

  #armMarkTimer(): void {
    if (this.#markTimer !== undefined || this.closed || this.stopSentAt !== undefined) return;
    const head = this.#pending[0];
    if (head === undefined) return;
    const dueAt = (this.startSentAt ?? 0) + head.due / BYTES_PER_MS;
    const delay = Math.max(0, dueAt - this.now());
    this.#markTimer = setTimeout(() => {
      this.#markTimer = undefined;
      this.#flushDueMarks();
    }, Math.ceil(delay));
  }

  #flushDueMarks(): void {
    if (this.closed || this.stopSentAt !== undefined || !this.autoEchoMarks) return;
    const nowS = this.#sampleAt(this.now());
    let echoed = false;
    while (this.#pending.length > 0) {
      const head = this.#pending[0];
      if (head === undefined || head.due > nowS + BYTES_PER_MS) break; // 1 ms tolerance for timer granularity
      this.#pending.shift();
      this.#echo(head.name);
      echoed = true;
    }
    this.#armMarkTimer();
    if (echoed) this.#notify();
  }

  /** Echoes every pending mark now, played or not. Returns their names. */
  echoPendingMarks(): string[] {
    this.#clearMarkTimer();
    const names = this.#pending.map((m) => m.name);
    this.#pending = [];
    for (const n of names) this.#echo(n);
    if (names.length > 0) this.#notify();
    return names;
  }

  /**
   * Pretends the playback buffer drained right now: echoes all pending marks and lets new
   * audio start playing at once. Audio already queued stays where it was scheduled in `heard()`.
   */
  playAll(): string[] {
    const nowS = this.#sampleAt(this.now());
    if (this.#playEnd > nowS) this.#playEnd = nowS;
    return this.echoPendingMarks();
  }

  /** Names of marks still waiting for their audio to play. */
  get pendingMarks(): string[] {
    return this.#pending.map((m) => m.name);
  }

  /**
   * When the agent audio queued so far finishes playing, in ms since the socket opened;
   * undefined before any agent audio arrived. In the past once the caller's playback is idle.
   */
  get playbackEndsAt(): number | undefined {
    if (this.startSentAt === undefined || this.firstMediaAt === undefined) return undefined;
    return this.startSentAt + this.#playEnd / BYTES_PER_MS;
  }

  /** ms of received audio not played yet. */
  get bufferedMs(): number {
    if (this.startSentAt === undefined) return 0;
    return Math.max(0, this.#playEnd - this.#sampleAt(this.now())) / BYTES_PER_MS;
  }

  /** Marks echoed so far. */
  get marksEchoed(): number {
    return this.echoedMarks.length;
  }

  #onClose(code: number, reason: string): void {
    this.closed = true;
    this.closeCode = code;
    this.closeReason = reason;
    this.closedAt = this.now();
    this.#clearMarkTimer();
    this.#resolveClosed({ code, reason });
    this.#notify();
  }

  // ---- waiting -----------------------------------------------------------

  #notify(): void {
    if (this.#waiters.size === 0) return;
    for (const w of this.#waiters) {
      let ok = false;
      try {
        ok = w.pred(this);
      } catch (err) {
        this.#waiters.delete(w);
        clearTimeout(w.timer);
        w.reject(err instanceof Error ? err : new Error(String(err)));
        continue;
      }
      if (ok) {
        this.#waiters.delete(w);
        clearTimeout(w.timer);
        w.resolve();
      } else if (this.closed) {
        this.#waiters.delete(w);
        clearTimeout(w.timer);
        w.reject(new Error(`twilioSim: socket closed (code ${this.closeCode ?? '?'}) before the awaited condition held`));
      }
    }
  }

  /**
   * Resolves when `pred(this)` holds; it is checked now, after every message from the
   * bridge, every mark echo and on close. Rejects on timeout (default 5000 ms) or when the
   * socket closes first.
   */
  waitFor(pred: (s: FakeTwilioStream) => boolean, timeoutMs = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      if (pred(this)) {
        resolve();
        return;
      }
      if (this.closed) {
        reject(new Error(`twilioSim: socket already closed (code ${this.closeCode ?? '?'}); awaited condition does not hold`));
        return;
      }
      const w: Waiter = {
        pred,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.delete(w);
          reject(timeoutError('a stream condition', timeoutMs));
        }, timeoutMs),
      };
      this.#waiters.add(w);
    });
  }

  /** Resolves with the close code and reason; rejects after `timeoutMs` (default 5000). */
  waitForClose(timeoutMs = 5000): Promise<{ code: number; reason: string }> {
    if (this.closed) return Promise.resolve({ code: this.closeCode ?? 1005, reason: this.closeReason });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(timeoutError('the WebSocket to close', timeoutMs)), timeoutMs);
      void this.whenClosed.then((v) => {
        clearTimeout(timer);
        resolve(v);
      });
    });
  }

  // ---- what the caller heard ----------------------------------------------

  /**
   * What the caller heard: mu-law at 8 kHz from `start` until the caller hung up
   * (`stop`), the socket closed, or now. Played agent audio sits where it played;
   * the rest is silence (0xff). Audio still buffered at the end is not included.
   */
  heard(): Uint8Array {
    if (this.startSentAt === undefined) return new Uint8Array(0);
    const endAt = this.stopSentAt ?? this.closedAt ?? this.now();
    const end = this.#sampleAt(endAt);
    const out = new Uint8Array(end).fill(MULAW_SILENCE);
    for (const seg of this.#segments) {
      if (seg.start >= end) break;
      const n = Math.min(seg.len, end - seg.start);
      if (n <= 0) continue;
      const bytes = Buffer.from(seg.payload, 'base64');
      out.set(bytes.subarray(0, n), seg.start);
    }
    return out;
  }
}

// ---------------------------------------------------------------------------
// Whole calls
// ---------------------------------------------------------------------------

export interface SimCallOptions {
  /** Address to connect to, e.g. `http://127.0.0.1:8080`. */
  bridgeUrl: string;
  /** Public origin the bridge signs against (`PUBLIC_URL`); defaults to `bridgeUrl`. */
  publicUrl?: string;
  authToken?: string;
  /** Voice webhook fields (From, To, CallSid, AccountSid, ...); `undefined` removes a default. */
  params?: Partial<Record<string, string>>;
  /** Override of the voice webhook signature (e.g. forged). */
  webhookSignature?: string;
  /** Override of the WebSocket upgrade signature; `null` sends none. */
  streamSignature?: string | null;
  /** Caller audio, raw mu-law 8 kHz, sent in 20 ms frames (last one padded with silence). */
  audio?: Uint8Array;
  /**
   * Base64 payload of caller frame `n`, asked for at send time (`nowMs` is the
   * `performance.now()` of the send); replaces `audio`/silence as the frame content.
   * The call length still follows `audio`, `trailingMs`, `waitForBridgeHangup`,
   * `maxDurationMs` and `signal`. For load benchmarks.
   */
  frameSource?: (n: number, nowMs: number) => string;
  /** Keep what the caller heard (default true); false makes `heard` silence and saves memory in big load runs. */
  recordHeard?: boolean;
  /** See {@link FakeTwilioStreamConnectOptions.onMedia}. */
  onMedia?: (payload: string, nowMs: number) => void;
  /** See {@link FakeTwilioStreamConnectOptions.onClear}. */
  onClear?: (nowMs: number) => void;
  /**
   * Let the agent greet first (default off: the caller talks from `start`). The caller
   * sends silence until agent audio has played and then stayed quiet for `quietMs`
   * (default 600), or until `maxWaitMs` (default 8000) has passed since `start`, and only
   * then its `audio` (or `frameSource`). `trailingMs` and the call length count from there;
   * `dtmf` times and `maxDurationMs` still count from `start`. See `SimCallResult.greetingWait`.
   */
  waitForGreeting?: boolean | { quietMs?: number; maxWaitMs?: number };
  /** Silence sent after `audio` before hanging up (default 0). */
  trailingMs?: number;
  /** Keep streaming silence until the bridge closes the socket (bounded by `maxDurationMs`). */
  waitForBridgeHangup?: boolean;
  /** Hard limit on streaming time; the caller hangs up when it is reached (default 60 000). */
  maxDurationMs?: number;
  /** Digits to press, at ms since `start`. */
  dtmf?: Array<{ atMs: number; digit: string }>;
  /** Send `POST /twilio/status` at the end (default true). */
  statusCallback?: boolean;
  /** Echo marks as Twilio does (default true). */
  autoEchoMarks?: boolean;
  /** Keep per-message records on the stream (default true; turn off for big load runs). */
  recordMessages?: boolean;
  onStream?: (s: FakeTwilioStream) => void;
  /** Aborting hangs up as the caller (or ends the attempt if the stream is not up yet). One signal shared by many calls gets one listener per call: raise its limit with `events.setMaxListeners`. */
  signal?: AbortSignal;
}

export interface SimCallResult {
  callSid: string;
  streamSid: string | undefined;
  /** HTTP status of the voice webhook (0 when it could not be reached). */
  voiceStatus: number;
  /** TwiML answered without a `<Connect><Stream>`. */
  refused: boolean;
  twiml: ParsedTwiml | undefined;
  sayTexts: string[];
  framesSent: number;
  bytesSent: number;
  mediaReceived: number;
  bytesReceived: number;
  heard: Uint8Array;
  clears: number;
  marksReceived: number;
  marksEchoed: number;
  /** ms from `start` sent to the first agent `media` received. */
  firstAgentAudioMs?: number;
  /**
   * With `waitForGreeting`, once the caller started talking: how long it stayed silent
   * (ms since `start`), and whether the greeting had ended (`ended`) or the wait reached
   * its cap (`timeout`: no agent audio, or still playing).
   */
  greetingWait?: { waitedMs: number; outcome: 'ended' | 'timeout' };
  protocolViolations: string[];
  endedBy: 'caller' | 'bridge' | 'error';
  closeCode?: number;
  /** From the voice webhook to the end of the call, ms. */
  durationMs: number;
  /** How late our own 20 ms timer fired per frame, ms. */
  sendLag: { p50: number; p99: number; max: number };
  /** What went wrong when `endedBy` is 'error' (or the status callback failed). */
  error?: string;
  /** HTTP status of the upgrade when the bridge refused the WebSocket. */
  streamConnectStatus?: number;
  /** The caller hung up because `maxDurationMs` elapsed. */
  timedOut?: boolean;
  statusCallbackStatus?: number;
}

/** base64 frames of an audio buffer, cached per buffer so N concurrent calls share them. */
const frameCache = new WeakMap<Uint8Array, string[]>();

function framesOf(audio: Uint8Array): string[] {
  const cached = frameCache.get(audio);
  if (cached) return cached;
  const frames: string[] = [];
  for (let off = 0; off < audio.length; off += FRAME_BYTES) {
    const part = audio.subarray(off, off + FRAME_BYTES);
    if (part.length === FRAME_BYTES) frames.push(Buffer.from(part.buffer, part.byteOffset, part.length).toString('base64'));
    else {
      const padded = Buffer.alloc(FRAME_BYTES, MULAW_SILENCE);
      padded.set(part);
      frames.push(padded.toString('base64'));
    }
  }
  frameCache.set(audio, frames);
  return frames;
}

function percentiles(values: number[]): { p50: number; p99: number; max: number } {
  if (values.length === 0) return { p50: 0, p99: 0, max: 0 };
  const s = Float64Array.from(values).sort();
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))] ?? 0;
  const r = (x: number): number => Math.round(x * 100) / 100;
  return { p50: r(at(0.5)), p99: r(at(0.99)), max: r(s[s.length - 1] ?? 0) };
}

const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/**
 * Places one call the way Twilio does: webhook → TwiML → signed WebSocket →
 * `connected`/`start` → 20 ms `media` frames (after the agent's greeting with
 * `waitForGreeting`) → hang up (`stop` + close) or wait for the bridge to close → status
 * callback. Never rejects; failures come back as `endedBy: 'error'`.
 */
export async function placeCall(opts: SimCallOptions): Promise<SimCallResult> {
  const t0 = performance.now();
  const publicUrl = opts.publicUrl ?? opts.bridgeUrl;
  const callSid = opts.params?.CallSid ?? newCallSid();
  const accountSid = opts.params?.AccountSid ?? newAccountSid();
  const result: SimCallResult = {
    callSid,
    streamSid: undefined,
    voiceStatus: 0,
    refused: false,
    twiml: undefined,
    sayTexts: [],
    framesSent: 0,
    bytesSent: 0,
    mediaReceived: 0,
    bytesReceived: 0,
    heard: new Uint8Array(0),
    clears: 0,
    marksReceived: 0,
    marksEchoed: 0,
    protocolViolations: [],
    endedBy: 'error',
    durationMs: 0,
    sendLag: { p50: 0, p99: 0, max: 0 },
  };
  let webhookParams: Record<string, string> = {};
  let finalStatus = 'completed';

  const finish = async (): Promise<SimCallResult> => {
    result.durationMs = Math.round(performance.now() - t0);
    if (opts.statusCallback !== false && result.voiceStatus !== 0) {
      const p: Record<string, string> = {
        CallSid: callSid,
        AccountSid: accountSid,
        From: webhookParams.From ?? '',
        To: webhookParams.To ?? '',
        Caller: webhookParams.Caller ?? webhookParams.From ?? '',
        Called: webhookParams.Called ?? webhookParams.To ?? '',
        CallStatus: finalStatus,
        Direction: webhookParams.Direction ?? 'inbound',
        ApiVersion: '2010-04-01',
        CallbackSource: 'call-progress-events',
        SequenceNumber: '0',
        Timestamp: new Date().toUTCString().replace('GMT', '+0000'),
      };
      if (finalStatus === 'completed') {
        const secs = Math.max(1, Math.ceil(result.durationMs / 1000));
        p.CallDuration = String(secs);
        p.Duration = String(Math.ceil(secs / 60));
      } else {
        p.CallDuration = '0';
      }
      try {
        const r = await postStatusCallback({ bridgeUrl: opts.bridgeUrl, publicUrl, ...(opts.authToken !== undefined ? { authToken: opts.authToken } : {}), params: p, timeoutMs: 5000 });
        result.statusCallbackStatus = r.status;
      } catch (err) {
        result.statusCallbackStatus = 0;
        result.error ??= `status callback failed: ${errorText(err)}`;
      }
    }
    return result;
  };

  if (opts.signal?.aborted) {
    result.error = 'aborted before the call started';
    return result;
  }

  // 1. Voice webhook.
  let voice: VoiceWebhookResult;
  try {
    voice = await postVoiceWebhook({
      bridgeUrl: opts.bridgeUrl,
      publicUrl,
      ...(opts.authToken !== undefined ? { authToken: opts.authToken } : {}),
      ...(opts.webhookSignature !== undefined ? { signature: opts.webhookSignature } : {}),
      ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
      params: { ...opts.params, CallSid: callSid, AccountSid: accountSid },
    });
  } catch (err) {
    result.error = `voice webhook failed: ${errorText(err)}`;
    result.durationMs = Math.round(performance.now() - t0);
    return result;
  }
  webhookParams = voice.params;
  result.voiceStatus = voice.status;
  result.twiml = voice.twiml;
  result.sayTexts = voice.twiml?.say ?? [];
  if (voice.twiml === undefined) {
    // Twilio: 11200, the caller hears an application error and the call fails.
    result.error = `voice webhook answered HTTP ${voice.status} without TwiML`;
    finalStatus = 'failed';
    return finish();
  }
  const streamUrl = voice.twiml.streamUrl;
  if (streamUrl === undefined) {
    result.refused = true;
    result.endedBy = 'bridge';
    if (voice.twiml.reject) finalStatus = voice.twiml.rejectReason === 'busy' ? 'busy' : 'no-answer';
    return finish();
  }

  // 2. Media stream.
  // Signed exactly as written; a relative url is resolved against the public origin.
  let signedUrl = streamUrl;
  try {
    const absolute = /^[a-z][a-z0-9+.-]*:/i.test(streamUrl);
    const u = new URL(streamUrl, publicUrl.replace(/^http/i, 'ws'));
    if (!absolute) signedUrl = u.href;
    if (u.protocol !== 'wss:' && u.protocol !== 'ws:') {
      result.protocolViolations.push(`31922 <Stream url> scheme is ${u.protocol} (Twilio requires wss)`);
    }
    if (u.search !== '' || signedUrl.includes('?')) {
      result.protocolViolations.push('31920 <Stream url> has a query string (unsupported by Twilio; dropped)');
      signedUrl = signedUrl.slice(0, signedUrl.indexOf('?'));
    }
  } catch {
    result.error = `invalid <Stream url> ${JSON.stringify(streamUrl)}`;
    return finish();
  }

  let stream: FakeTwilioStream;
  try {
    stream = await FakeTwilioStream.connect({
      bridgeUrl: opts.bridgeUrl,
      streamUrl: signedUrl,
      ...(opts.authToken !== undefined ? { authToken: opts.authToken } : {}),
      ...(opts.streamSignature !== undefined ? { signature: opts.streamSignature } : {}),
      autoEchoMarks: opts.autoEchoMarks ?? true,
      recordMessages: opts.recordMessages ?? true,
      ...(opts.recordHeard !== undefined ? { recordHeard: opts.recordHeard } : {}),
      ...(opts.onMedia !== undefined ? { onMedia: opts.onMedia } : {}),
      ...(opts.onClear !== undefined ? { onClear: opts.onClear } : {}),
    });
  } catch (err) {
    result.error = errorText(err);
    if (err instanceof StreamConnectError && err.status !== undefined) result.streamConnectStatus = err.status;
    return finish();
  }
  opts.onStream?.(stream);

  const streamSid = newStreamSid();
  result.streamSid = streamSid;
  stream.sendConnected();
  stream.sendStart({ callSid, streamSid, accountSid, customParameters: voice.twiml.parameters });

  // 3. Frames, one drift-corrected timer.
  const audioFrames = opts.audio ? framesOf(opts.audio) : [];
  const trailingFrames = Math.ceil(Math.max(0, opts.trailingMs ?? 0) / FRAME_MS);
  const maxFrames = Math.ceil(Math.max(0, opts.maxDurationMs ?? 60_000) / FRAME_MS);
  const callerFrames = audioFrames.length + trailingFrames;
  const greeting = opts.waitForGreeting === true ? {} : opts.waitForGreeting === false ? undefined : opts.waitForGreeting;
  const greetingQuietMs = Math.max(0, greeting?.quietMs ?? 600);
  const greetingMaxWaitMs = Math.max(0, greeting?.maxWaitMs ?? 8000);
  /** Frame at which the caller's audio starts; undefined while it waits for the greeting. */
  let talkFrom: number | undefined = greeting === undefined ? 0 : undefined;
  const dtmf = [...(opts.dtmf ?? [])].sort((a, b) => a.atMs - b.atMs);
  const frameSource = opts.frameSource;
  const lags: number[] = [];
  const clockStart = performance.now();
  let n = 0;
  let timer: NodeJS.Timeout | undefined;

  const outcome = await new Promise<'caller' | 'bridge' | 'timeout' | 'abort'>((resolve) => {
    let done = false;
    const end = (why: 'caller' | 'bridge' | 'timeout' | 'abort'): void => {
      if (done) return;
      done = true;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      opts.signal?.removeEventListener('abort', onAbort);
      resolve(why);
    };
    const onAbort = (): void => end('abort');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    void stream.whenClosed.then(() => end('bridge'));

    const tick = (): void => {
      timer = undefined;
      if (done) return;
      if (stream.closed) return end('bridge');
      const now = performance.now();
      while (clockStart + n * FRAME_MS <= now) {
        const due = n * FRAME_MS;
        if (talkFrom === undefined) {
          const playedUntil = stream.playbackEndsAt;
          const ended = playedUntil !== undefined && stream.now() - playedUntil >= greetingQuietMs;
          if (ended || due >= greetingMaxWaitMs) {
            talkFrom = n;
            result.greetingWait = { waitedMs: due, outcome: ended ? 'ended' : 'timeout' };
          }
        }
        // Frame n would start at n·20 ms: the caller is done once all its frames have played.
        if (!opts.waitForBridgeHangup && talkFrom !== undefined && n - talkFrom >= callerFrames) return end('caller');
        if (n >= maxFrames) return end('timeout');
        lags.push(now - clockStart - due);
        while (dtmf.length > 0 && (dtmf[0]?.atMs ?? Infinity) <= due) stream.sendDtmf(dtmf.shift()?.digit ?? '');
        const k = talkFrom === undefined ? -1 : n - talkFrom;
        stream.sendMedia(k < 0 ? SILENCE_FRAME_B64 : frameSource !== undefined ? frameSource(n, now) : k < audioFrames.length ? audioFrames[k] : SILENCE_FRAME_B64, due);
        n++;
      }
      timer = setTimeout(tick, Math.max(0, clockStart + n * FRAME_MS - performance.now()));
    };
    if (opts.signal?.aborted) return end('abort');
    tick();
  });

  if (outcome === 'bridge') {
    result.endedBy = 'bridge';
  } else {
    // The caller hangs up: Twilio sends `stop` and closes the socket.
    result.endedBy = 'caller';
    if (outcome === 'timeout') result.timedOut = true;
    stream.sendStop();
    stream.close(1000);
    try {
      await stream.waitForClose(2000);
    } catch {
      stream.terminate();
      await stream.whenClosed;
    }
  }
  if (stream.closeCode !== undefined) result.closeCode = stream.closeCode;

  result.framesSent = stream.framesSent;
  result.bytesSent = stream.bytesSent;
  result.mediaReceived = stream.mediaReceived;
  result.bytesReceived = stream.bytesReceived;
  result.heard = stream.heard();
  result.clears = stream.clears;
  result.marksReceived = stream.marks.length;
  result.marksEchoed = stream.marksEchoed;
  if (stream.firstMediaAt !== undefined && stream.startSentAt !== undefined) {
    result.firstAgentAudioMs = Math.round(stream.firstMediaAt - stream.startSentAt);
  }
  result.protocolViolations.push(...stream.violations);
  if (stream.violationCount > stream.violations.length) {
    result.protocolViolations.push(`... and ${stream.violationCount - stream.violations.length} more`);
  }
  result.sendLag = percentiles(lags);
  return finish();
}

export interface PlaceCallsOptions {
  /** Calls in flight at once (default: all). */
  concurrency?: number;
  /** Spread call starts evenly over this many ms (call i starts no earlier than i·rampMs/n). */
  rampMs?: number;
}

/** Runs `n` calls (optsFactory(i) for call i) and returns their results in index order. */
export async function placeCalls(n: number, optsFactory: (i: number) => SimCallOptions, opts: PlaceCallsOptions = {}): Promise<SimCallResult[]> {
  const results = new Array<SimCallResult>(n);
  const concurrency = Math.max(1, Math.min(n, opts.concurrency ?? n));
  const rampMs = Math.max(0, opts.rampMs ?? 0);
  const t0 = performance.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      const startAt = t0 + (n > 0 ? (i * rampMs) / n : 0);
      const wait = startAt - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      results[i] = await placeCall(optsFactory(i));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, () => worker()));
  return results;
}
