/**
 * `npm run agents -- list|show|stats`: PlayAI agents and their stats, read through the
 * PlayAI REST API (reference §4) with PLAYAI_API_KEY and PLAYAI_USER_ID, for operators
 * who run a PlayAI-protocol service. See `--help`.
 */
import { parseArgs } from 'node:util';
import { configuredPlayaiAgents } from '../agent/playai/bootCheck.js';
import { DEFAULT_PLAYAI_API_URL, fetchAgent, fetchAgentStats, PlayAiRestError, type PlayAiRestAccess } from '../agent/playai/rest.js';
import { ConfigError, loadConfig } from '../config.js';
import { UsageError, errorMessage, isEntryPoint, processIo, withDotEnv, type CliIo } from './io.js';

export const HELP = `Usage: npm run agents -- <command> [options]

Reads PlayAI agents and their stats through the PlayAI REST API
(PLAYAI_API_URL, default ${DEFAULT_PLAYAI_API_URL}) with PLAYAI_API_KEY and
PLAYAI_USER_ID, from the shell or .env, as the server does.

Commands:
  list                the PlayAI agents this configuration names (PLAYAI_AGENT_ID or
                      DEFAULT_AGENT, ROUTES_FILE, AGENTS_FILE, AGENT_LIMITS), each
                      looked up: name, voice, TTS model, where it is named.
                      (The API has no "all agents of an account" endpoint.)
  show AGENT_ID       one agent's settings (GET /api/v1/agents/AGENT_ID)
  stats [AGENT_ID…]   conversations, phone conversations and time talked
                      (GET /api/v1/agent-stats/AGENT_ID); default: the configured agents

Options:
  --json              print JSON instead of text
  -h, --help          show this help

Exit code: 0 when every agent was read, 1 when one was not (missing, refused,
unreachable), 2 on bad options or settings.
`;

/** A row of `list`/`stats`: what was read, or why not. */
type Row<T> = { agentId: string; where: string[] } & ({ ok: true; value: T } | { ok: false; error: string });

function accessFrom(env: Record<string, string | undefined>, io: CliIo): PlayAiRestAccess {
  const apiKey = env.PLAYAI_API_KEY?.trim() ?? '';
  const userId = env.PLAYAI_USER_ID?.trim() ?? '';
  if (apiKey === '') throw new UsageError('PLAYAI_API_KEY is not set (in the shell or .env): the PlayAI REST API needs it');
  if (userId === '') throw new UsageError('PLAYAI_USER_ID is not set (in the shell or .env): the PlayAI REST API needs it as X-User-Id');
  const baseUrl = env.PLAYAI_API_URL?.trim() || DEFAULT_PLAYAI_API_URL;
  return { baseUrl, apiKey, userId, fetchImpl: io.fetch };
}

/** The configured PlayAI agents (ids → where named). */
function configured(env: Record<string, string | undefined>): Map<string, string[]> {
  try {
    return configuredPlayaiAgents(loadConfig(env));
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(`the configuration has an error, so its agents are unknown: ${err.message}`);
    throw err;
  }
}

const why = (err: unknown): string => {
  if (err instanceof PlayAiRestError && err.status === 404) return 'not found';
  if (err instanceof PlayAiRestError && (err.status === 401 || err.status === 403)) return `refused (HTTP ${err.status}): check PLAYAI_API_KEY and PLAYAI_USER_ID`;
  return errorMessage(err);
};

async function readAll<T>(ids: Map<string, string[]>, read: (id: string) => Promise<T>): Promise<Array<Row<T>>> {
  return Promise.all(
    [...ids].map(async ([agentId, where]): Promise<Row<T>> => {
      try {
        return { agentId, where, ok: true, value: await read(agentId) };
      } catch (err) {
        return { agentId, where, ok: false, error: why(err) };
      }
    }),
  );
}

/** Text columns, padded to their widest cell. */
function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  return [line(head), ...rows.map(line)].join('\n') + '\n';
}

const minutes = (s: number): string => `${(s / 60).toFixed(1)} min`;

export async function run(args: string[], io: CliIo): Promise<number> {
  try {
    return await agents(args, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`agents: ${err.message}\n\n${HELP}`);
      return 2;
    }
    throw err;
  }
}

async function agents(args: string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args, options: { json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } }, strict: true, allowPositionals: true });
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
  if (parsed.values.help) {
    io.stdout.write(HELP);
    return 0;
  }
  const [command, ...rest] = parsed.positionals;
  const json = parsed.values.json;
  const env = withDotEnv(io.env, io.cwd);
  const out = (v: unknown): void => void io.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

  if (command === 'show') {
    if (rest.length !== 1 || rest[0] === undefined) throw new UsageError('show takes one AGENT_ID');
    const access = accessFrom(env, io);
    try {
      const a = await fetchAgent(access, rest[0]);
      if (json) out(a);
      else {
        const lines: Array<[string, string | undefined]> = [
          ['id', a.id],
          ['name', a.displayName],
          ['description', a.description],
          ['voice', a.voice],
          ['voice speed', a.voiceSpeed?.toString()],
          ['TTS model', a.ttsModel],
          ['language', a.language],
          ['visibility', a.visibility],
          ['greeting', a.greeting],
          ['prompt', a.prompt === undefined ? undefined : a.prompt.length > 300 ? `${a.prompt.slice(0, 300)}… (${a.prompt.length} characters)` : a.prompt],
          ['phone numbers', a.phoneNumbers.join(', ') || undefined],
          ['actions', a.actions.join(', ') || undefined],
        ];
        for (const [k, v] of lines) if (v !== undefined && v !== '') io.stdout.write(`${`${k}:`.padEnd(15)}${v}\n`);
      }
      return 0;
    } catch (err) {
      io.stderr.write(`agents: ${rest[0]}: ${why(err)}\n`);
      return 1;
    }
  }

  if (command === 'list' || command === 'stats') {
    if (command === 'list' && rest.length > 0) throw new UsageError('list takes no arguments');
    const ids = command === 'stats' && rest.length > 0 ? new Map(rest.map((id) => [id, ['the command line']])) : configured(env);
    const access = accessFrom(env, io);
    if (ids.size === 0) {
      io.stderr.write('agents: this configuration names no PlayAI agent (PLAYAI_AGENT_ID, DEFAULT_AGENT=playai:…, ROUTES_FILE, AGENTS_FILE); name one: npm run agents -- stats AGENT_ID\n');
      return 1;
    }
    if (command === 'list') {
      const rows = await readAll(ids, (id) => fetchAgent(access, id));
      if (json) out(rows.map((r) => (r.ok ? { agentId: r.agentId, where: r.where, agent: r.value } : { agentId: r.agentId, where: r.where, error: r.error })));
      else
        io.stdout.write(
          table(
            ['AGENT', 'NAME', 'VOICE', 'MODEL', 'NAMED IN'],
            rows.map((r) => (r.ok ? [r.agentId, r.value.displayName ?? '', r.value.voice ?? '', r.value.ttsModel ?? '', r.where.join('; ')] : [r.agentId, `(${r.error})`, '', '', r.where.join('; ')])),
          ),
        );
      return rows.every((r) => r.ok) ? 0 : 1;
    }
    const rows = await readAll(ids, (id) => fetchAgentStats(access, id));
    if (json) out(rows.map((r) => (r.ok ? { agentId: r.agentId, stats: r.value } : { agentId: r.agentId, error: r.error })));
    else
      io.stdout.write(
        table(
          ['AGENT', 'CONVERSATIONS', 'PHONE', 'TALKED'],
          rows.map((r) => (r.ok ? [r.agentId, String(r.value.numberOfConversations), String(r.value.numberOfPhoneConversations ?? ''), minutes(r.value.numberOfSecondsTalked)] : [r.agentId, `(${r.error})`, '', ''])),
        ),
      );
    return rows.every((r) => r.ok) ? 0 : 1;
  }
  throw new UsageError(command === undefined ? 'a command is required: list, show or stats' : `unknown command ${JSON.stringify(command)}: use list, show or stats`);
}

async function main(): Promise<void> {
  process.exitCode = await run(process.argv.slice(2), processIo());
}

if (isEntryPoint(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`agents: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
