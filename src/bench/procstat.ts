/**
 * Process CPU time and memory from the OS (Linux `/proc`), for the benchmark.
 *
 * - CPU: `utime + stime` of `/proc/<pid>/stat` (fields 14 and 15), in clock
 *   ticks, for all threads of the process (GC and libuv threads included).
 * - Memory: `VmRSS` / `VmHWM` of `/proc/<pid>/status`, in kB.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let clkTck: number | undefined;

/** Clock ticks per second (`getconf CLK_TCK`; 100 when it cannot be read). */
export function clockTicksPerSecond(): number {
  if (clkTck !== undefined) return clkTck;
  clkTck = 100;
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 2000, stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    if (Number.isInteger(n) && n > 0) clkTck = n;
  } catch {
    /* keep the default */
  }
  return clkTck;
}

/**
 * Parses the text of `/proc/<pid>/stat`: user and system time in ticks.
 * The command name (field 2) may contain spaces and parentheses, so fields are
 * counted from the last `)`.
 */
export function parseProcStat(text: string): { utime: number; stime: number } {
  const close = text.lastIndexOf(')');
  if (close < 0) throw new Error('procstat: malformed /proc/<pid>/stat');
  // After ") " come fields 3 (state), 4 (ppid), ...; utime is field 14, stime field 15.
  const fields = text.slice(close + 2).split(' ');
  const utime = Number(fields[14 - 3]);
  const stime = Number(fields[15 - 3]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error('procstat: malformed /proc/<pid>/stat');
  return { utime, stime };
}

/** utime + stime of a process, in clock ticks. Throws when the process is gone. */
export function readCpuTicks(pid: number): number {
  const { utime, stime } = readCpuTimes(pid);
  return utime + stime;
}

/** utime and stime of a process, in clock ticks. Throws when the process is gone. */
export function readCpuTimes(pid: number): { utime: number; stime: number } {
  return parseProcStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
}

/** Host-wide CPU time (first line of `/proc/stat`), in clock ticks summed over all CPUs. */
export interface HostCpuTimes {
  busy: number;
  idle: number;
  steal: number;
}

export function parseHostStat(text: string): HostCpuTimes {
  const line = text.split('\n', 1)[0] ?? '';
  if (!line.startsWith('cpu ')) throw new Error('procstat: malformed /proc/stat');
  // user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in user)
  const f = line.trim().split(/\s+/).slice(1, 9).map((x) => Number(x) || 0);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  return { busy: user + nice + system + irq + softirq, idle: idle + iowait, steal };
}

export function readHostCpuTimes(): HostCpuTimes | undefined {
  try {
    return parseHostStat(readFileSync('/proc/stat', 'utf8'));
  } catch {
    return undefined;
  }
}

/** Value in kB of a `Name:   1234 kB` line of `/proc/<pid>/status` (undefined if absent). */
export function parseStatusKb(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, 'm').exec(text);
  return m?.[1] === undefined ? undefined : Number(m[1]);
}

/** Resident set size and its high-water mark, in kB. Throws when the process is gone. */
export function readMemoryKb(pid: number): { rssKb: number; hwmKb: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = parseStatusKb(text, 'VmRSS');
  if (rssKb === undefined) throw new Error(`procstat: no VmRSS for pid ${pid}`);
  return { rssKb, hwmKb: parseStatusKb(text, 'VmHWM') ?? rssKb };
}

/** CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status), e.g. [0, 1]. */
export function allowedCpus(): number[] {
  try {
    const text = readFileSync('/proc/self/status', 'utf8');
    const m = /^Cpus_allowed_list:\s*(\S+)/m.exec(text);
    if (m?.[1] === undefined) return [];
    const out: number[] = [];
    for (const part of m[1].split(',')) {
      const [a, b] = part.split('-').map(Number);
      if (a === undefined || !Number.isInteger(a)) continue;
      const end = b !== undefined && Number.isInteger(b) ? b : a;
      for (let c = a; c <= end && out.length < 4096; c++) out.push(c);
    }
    return out;
  } catch {
    return [];
  }
}
