import { describe, expect, it } from 'vitest';
import { decodeAgentMessage, encodeAudioIn, encodeSetup, isFatalAgentError } from '../src/agent/playai/codec.js';

describe('PlayAI agent protocol codec', () => {
  it('decodes the messages the bridge acts on', () => {
    expect(decodeAgentMessage('{"type":"init","agentOwnerId":"o","conversationId":"c1","recordingPresignedUrl":"x"}')).toEqual({
      type: 'init',
      conversationId: 'c1',
      agentOwnerId: 'o',
    });
    expect(decodeAgentMessage('{"type":"audioStream","data":"AAAA"}')).toEqual({ type: 'audioStream', data: 'AAAA' });
    expect(decodeAgentMessage('{"type":"hangup","endedBy":"agent"}')).toEqual({ type: 'hangup', endedBy: 'agent' });
    expect(decodeAgentMessage('{"type":"error","code":4429,"message":"m","isFatal":true}')).toEqual({
      type: 'error',
      code: 4429,
      message: 'm',
      isFatal: true,
    });
    expect(decodeAgentMessage('{"type":"onUserTranscript","message":"hi"}')).toEqual({ type: 'onUserTranscript', message: 'hi' });
    expect(decodeAgentMessage('{"type":"voiceActivityStart"}')).toEqual({ type: 'voiceActivityStart' });
    expect(decodeAgentMessage('{"type":"newAudioStream"}')).toEqual({ type: 'newAudioStream' });
  });

  it('is tolerant: documented extras are ignored, unknown types reported, garbage classified', () => {
    expect(decodeAgentMessage('{"type":"onAgentGreeting","message":"x"}')).toEqual({ type: 'ignored', name: 'onAgentGreeting' });
    expect(decodeAgentMessage('{"type":"brandNew"}')).toEqual({ type: 'unknown', name: 'brandNew' });
    expect(decodeAgentMessage('nope')).toMatchObject({ kind: 'non_json' });
    expect(decodeAgentMessage('{"type":"init"}')).toMatchObject({ kind: 'invalid_fields' });
    expect(decodeAgentMessage('{"type":"audioStream","data":"!!"}')).toMatchObject({ kind: 'bad_audio' });
    expect(decodeAgentMessage('{"type":"error"}')).toEqual({ type: 'error', code: undefined, message: '', isFatal: undefined });
  });

  it('encodes setup and audioIn', () => {
    const setup = encodeSetup({ type: 'setup', inputEncoding: 'mulaw', inputSampleRate: 8000, outputFormat: 'mulaw', outputSampleRate: 8000, continueConversation: 'c1' });
    expect(JSON.parse(setup)).toMatchObject({ type: 'setup', continueConversation: 'c1' });
    expect(JSON.parse(encodeAudioIn('AAAA'))).toEqual({ type: 'audioIn', data: 'AAAA' });
  });

  it('classifies errors: isFatal wins, otherwise documented codes are fatal for the socket', () => {
    expect(isFatalAgentError(2001, false)).toBe(false);
    expect(isFatalAgentError(2001, true)).toBe(true);
    expect(isFatalAgentError(4429, undefined)).toBe(true);
    expect(isFatalAgentError(4500, undefined)).toBe(true);
    expect(isFatalAgentError(2001, undefined)).toBe(false);
    expect(isFatalAgentError(undefined, undefined)).toBe(false);
  });
});
