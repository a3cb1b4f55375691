import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { conferenceJoinTwiml, conferenceWaitTwiml, transferDialTwiml } from '../src/carrier/twilio/twiml.js';
import { parseTwiml } from '../src/sim/twilioSim.js';
import { lookupTarget, mergeTargets, transferTargetsSchema, transferTool } from '../src/transfer/targets.js';

describe('transfer targets', () => {
  it('takes a number or a sip: URI for short, or an object with caller ID, ring timeout and description', () => {
    const t = transferTargetsSchema.parse({
      frontdesk: '+1 (415) 555-0100',
      pbx: 'sip:desk@pbx.example.com',
      billing: { to: '+14155550101', callerId: '+14155550199', timeoutS: 20, description: 'billing questions' },
    });
    expect(t.frontdesk).toEqual({ to: '+14155550100', timeoutS: 30 });
    expect(t.pbx).toEqual({ to: 'sip:desk@pbx.example.com', timeoutS: 30 });
    expect(t.billing).toEqual({ to: '+14155550101', callerId: '+14155550199', timeoutS: 20, description: 'billing questions' });
  });

  it('refuses a bad address, a bad name and an out-of-range timeout with the fix', () => {
    const msg = (v: unknown): string => {
      const r = transferTargetsSchema.safeParse(v);
      return r.success ? '' : JSON.stringify(r.error.issues);
    };
    expect(msg({ desk: 'call mom' })).toMatch(/neither a phone number with its \+country code/);
    expect(msg({ 'front desk': '+14155550100' })).toMatch(/target name is 1 to 40 letters/);
    expect(msg({ desk: { to: '+14155550100', timeoutS: 500 } })).toMatch(/120/);
  });

  it('refuses a name that is not declared, listing the ones that are, so a model cannot dial a number it made up', () => {
    const targets = transferTargetsSchema.parse({ frontdesk: '+14155550100' });
    expect(lookupTarget(targets, 'frontdesk')).toMatchObject({ ok: true, target: { to: '+14155550100' } });
    const r = lookupTarget(targets, '+14155559999');
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(/no transfer target named "\+14155559999": use one of "frontdesk"/);
    expect(lookupTarget(targets, 'constructor').ok).toBe(false);
    expect(lookupTarget({}, 'x')).toMatchObject({ ok: false, error: expect.stringMatching(/no transfer targets are set up/) });
  });

  it('lets the route override the agent target of the same name', () => {
    const agent = transferTargetsSchema.parse({ frontdesk: '+14155550100', sales: '+14155550102' });
    const route = transferTargetsSchema.parse({ frontdesk: '+14155550200' });
    expect(mergeTargets(agent, route)).toMatchObject({ frontdesk: { to: '+14155550200' }, sales: { to: '+14155550102' } });
  });

  it('offers transfer_call with the target names as an enum, and no tool when there are none', () => {
    const tool = transferTool(transferTargetsSchema.parse({ frontdesk: '+14155550100', billing: { to: '+14155550101', description: 'invoices' } }));
    expect(tool?.name).toBe('transfer_call');
    expect(tool?.parameters).toMatchObject({ properties: { target: { enum: ['frontdesk', 'billing'] } }, required: ['target'] });
    expect(tool?.description).toMatch(/billing \(invoices\)/);
    expect(transferTool({})).toBeUndefined();
  });
});

describe('transfer TwiML', () => {
  it('dials a number with the action URL, ring timeout and caller ID, and reports the answer', () => {
    const xml = transferDialTwiml({ to: '+14155550100', callerId: '+14155550199', timeoutS: 20, actionUrl: 'https://v.example.com/twilio/transfer/t1/action?x=1&y=2', statusCallbackUrl: 'https://v.example.com/twilio/transfer/t1/status' });
    expect(xml).toContain('<Dial action="https://v.example.com/twilio/transfer/t1/action?x=1&amp;y=2" method="POST" timeout="20" answerOnBridge="true" callerId="+14155550199">');
    expect(xml).toContain('<Number statusCallback="https://v.example.com/twilio/transfer/t1/status" statusCallbackMethod="POST" statusCallbackEvent="answered completed">+14155550100</Number>');
    expect(parseTwiml(xml).dial).toEqual(['+14155550100']);
  });

  it('dials a SIP address with <Sip>', () => {
    expect(transferDialTwiml({ to: 'sip:desk@pbx.example.com', timeoutS: 30, actionUrl: 'https://v/a' })).toContain('<Sip>sip:desk@pbx.example.com</Sip>');
  });

  it('puts the caller in a conference that starts when the person joins, then hangs up', () => {
    const xml = conferenceWaitTwiml({ room: 'pl-t1', waitUrl: 'https://v.example.com/hold.xml' });
    expect(xml).toMatch(/<Dial><Conference startConferenceOnEnter="false" endConferenceOnExit="true" beep="false" waitUrl="https:\/\/v.example.com\/hold.xml">pl-t1<\/Conference><\/Dial><Hangup\/>/);
  });

  it('lets the person hear the summary, then join and start the conference', () => {
    const xml = conferenceJoinTwiml('A caller about a late order <4512>.', 'pl-t1');
    expect(xml).toContain('<Say>A caller about a late order &lt;4512&gt;.</Say><Dial><Conference startConferenceOnEnter="true" endConferenceOnExit="true" beep="false">pl-t1</Conference></Dial>');
  });
});

describe('transfer settings at boot', () => {
  const routes = (route: Record<string, unknown>): string => {
    const file = join(mkdtempSync(join(tmpdir(), 'playline-routes-')), 'routes.json');
    writeFileSync(file, JSON.stringify({ '+14155550999': { agentId: 'playai:a', ...route } }));
    return file;
  };

  it('takes a route with targets and a hotkey to one of them', () => {
    const c = loadConfig({ PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'a', ROUTES_FILE: routes({ transferTargets: { frontdesk: '+14155550100' }, dtmf: { '0': { transfer: 'frontdesk' } } }) });
    expect(c.routes.get('+14155550999')).toMatchObject({ transferTargets: { frontdesk: { to: '+14155550100' } }, dtmf: { '0': { transfer: 'frontdesk', mode: 'cold' } } });
  });

  it('stops the boot for a hotkey to a target nobody declared, naming the targets there are', () => {
    expect(() => loadConfig({ PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'a', ROUTES_FILE: routes({ transferTargets: { frontdesk: '+14155550100' }, dtmf: { '9': { transfer: 'ceo' } } }) })).toThrow(
      /dtmf\.9 transfers to "ceo", which is not a transfer target of this route or of its agent playai:a \(targets: frontdesk\)/,
    );
    expect(() => loadConfig({ PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'a', ROUTES_FILE: routes({ dtmf: { '12': { transfer: 'x' } } }) })).toThrow(/a hotkey is one key/);
  });
});
