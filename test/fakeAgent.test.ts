import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { encodeAudioIn, encodeSetup, type AgentSetup } from '../src/agent/playai/codec.js';
import { FakeAgentServer } from '../src/testing/fakeAgent.js';

type Frame = Record<string, unknown>;

const SETUP: AgentSetup = {
  type: 'setup',
  apiKey: 'k',
  inputEncoding: 'mulaw',
  inputSampleRate: 8000,
  outputFormat: 'mulaw',
  outputSampleRate: 8000,
};

interface Client {
  ws: WebSocket;
  frames: Frame[];
  next(): Promise<Frame>;
  closed: Promise<number>;
}

const servers: FakeAgentServer[] = [];
const sockets: WebSocket[] = [];

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function startFake(...args: Parameters<typeof FakeAgentServer.start>): Promise<FakeAgentServer> {
  const server = await FakeAgentServer.start(...args);
  servers.push(server);
  return server;
}

/** Opens a client and returns helpers to read server frames in order. */
function connect(server: FakeAgentServer, agentId = 'agent-1'): Promise<Client> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.url}/v1/talk/${agentId}`, { headers: { 'x-test': 'yes' } });
    sockets.push(ws);
    const frames: Frame[] = [];
    let read = 0;
    let wake: (() => void) | undefined;
    ws.on('message', (data) => {
      frames.push(JSON.parse(data.toString()) as Frame);
      wake?.();
    });
    const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
    const next = async (): Promise<Frame> => {
      while (frames.length <= read) await new Promise<void>((r) => (wake = r));
      return frames[read++] as Frame;
    };
    ws.once('open', () => resolve({ ws, frames, next, closed }));
    ws.once('error', reject);
  });
}

describe('FakeAgentServer', () => {
  it('records setup, headers and audioIn, replies init and echoes audio when asked', async () => {
    const fake = await startFake({ echo: true });
    const client = await connect(fake, 'my%20agent');
    client.ws.send(encodeSetup(SETUP));
    const init = await client.next();
    const conn = await fake.nextConnection();
    expect(conn.agentId).toBe('my agent');
    expect(conn.headers['x-test']).toBe('yes');
    expect(await conn.waitForSetup()).toEqual(SETUP);
    expect(init).toEqual({ type: 'init', agentOwnerId: 'fake', conversationId: conn.conversationId });

    client.ws.send(encodeAudioIn('AAAA'));
    client.ws.send(encodeAudioIn(''));
    client.ws.send(encodeAudioIn('//8='));
    expect(await conn.waitForAudioIn(3)).toEqual(['AAAA', '', '//8=']);
    expect(await client.next()).toEqual({ type: 'audioStream', data: 'AAAA' });
    expect(await client.next()).toEqual({ type: 'audioStream', data: '//8=' });
    expect(conn.frames.map((f) => f.type)).toEqual(['setup', 'audioIn', 'audioIn', 'audioIn']);
  });

  it('rejectWith sends the error instead of init and closes', async () => {
    const fake = await startFake({ rejectWith: { code: 4429, message: 'too many' } });
    const client = await connect(fake);
    client.ws.send(encodeSetup(SETUP));
    expect(await client.next()).toEqual({ type: 'error', code: 4429, message: 'too many', isFatal: true });
    expect(await client.closed).toBe(1008);
    const conn = await fake.nextConnection();
    expect(conn.conversationId).toBeUndefined();
    expect(conn.isOpen).toBe(false);
  });

  it('requires the configured apiKey (4401)', async () => {
    const fake = await startFake({ apiKey: 'secret' });
    const client = await connect(fake);
    client.ws.send(encodeSetup({ ...SETUP, apiKey: 'nope' }));
    expect(await client.next()).toMatchObject({ type: 'error', code: 4401, isFatal: true });
    await client.closed;
  });

  it('delays init by initDelayMs and reads options when each connection arrives', async () => {
    const fake = await startFake({ initDelayMs: 150 });
    const client = await connect(fake);
    const sent = Date.now();
    client.ws.send(encodeSetup(SETUP));
    await client.next();
    expect(Date.now() - sent).toBeGreaterThanOrEqual(140);

    fake.options = { autoInit: false };
    const quiet = await connect(fake);
    quiet.ws.send(encodeSetup(SETUP));
    await fake.nextConnection();
    const conn = await fake.nextConnection();
    await conn.waitForSetup();
    conn.init('conv-1');
    expect(await quiet.next()).toEqual({ type: 'init', agentOwnerId: 'fake', conversationId: 'conv-1' });
  });

  it('scripted helpers send the documented frames', async () => {
    const fake = await startFake({ autoInit: false });
    const client = await connect(fake);
    const conn = await fake.nextConnection();
    conn.newAudioStream();
    conn.audio('AAAA');
    conn.voiceActivityStart();
    conn.voiceActivityEnd();
    conn.transcript('user', 'hi');
    conn.transcript('agent', 'hello');
    conn.error(4500, 'boom');
    conn.hangup();
    conn.close(1000, 'bye');
    expect(await client.closed).toBe(1000);
    expect(client.frames).toEqual([
      { type: 'newAudioStream' },
      { type: 'audioStream', data: 'AAAA' },
      { type: 'voiceActivityStart' },
      { type: 'voiceActivityEnd' },
      { type: 'onUserTranscript', message: 'hi' },
      { type: 'onAgentTranscript', message: 'hello' },
      { type: 'error', code: 4500, message: 'boom' },
      { type: 'hangup', endedBy: 'agent' },
    ]);
    expect(await conn.closed).toEqual({ code: 1000, reason: 'bye' });
  });

  it('waits time out with a clear error and leave no timers behind', async () => {
    const timersBefore = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const fake = await startFake();
    await expect(fake.nextConnection(50)).rejects.toThrow(/timed out after 50 ms waiting for a connection/);
    const client = await connect(fake);
    client.ws.send(encodeSetup(SETUP));
    const conn = await fake.nextConnection();
    await expect(conn.waitFor((f) => f.type === 'audioIn', 50)).rejects.toThrow(/timed out after 50 ms/);
    await expect(conn.waitForAudioIn(1, 50)).rejects.toThrow(/1 audioIn frame\(s\) \(got 0\)/);
    expect(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length).toBeLessThanOrEqual(timersBefore);
  });

  it('rejects pending waits when the socket closes, and pending nextConnection on close()', async () => {
    const fake = await startFake();
    const client = await connect(fake);
    const conn = await fake.nextConnection();
    const pending = conn.waitForAudioIn(1, 2000);
    conn.terminate();
    await expect(pending).rejects.toThrow(/connection closed/);
    expect(await client.closed).toBe(1006);
    const waiting = fake.nextConnection(2000);
    await fake.close();
    await expect(waiting).rejects.toThrow(/server closed/);
  });

  it('refuses paths other than /v1/talk/{agentId} with 404', async () => {
    const fake = await startFake();
    const status = await new Promise<number | undefined>((resolve) => {
      const ws = new WebSocket(`${fake.url}/elsewhere`);
      ws.once('unexpected-response', (_req, res) => {
        resolve(res.statusCode);
        ws.terminate();
      });
      ws.once('error', () => resolve(undefined));
    });
    expect(status).toBe(404);
  });
});
