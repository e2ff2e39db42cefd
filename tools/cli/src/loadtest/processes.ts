import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readdirSync, readFileSync, type WriteStream } from 'node:fs';
import { join, resolve } from 'node:path';

/**
 * Launching the Tandem services as child processes, optionally pinned to a CPU with
 * taskset, and reading a process's CPU time from /proc. (`tandem demo` launches the same
 * services; this launcher is the load test's own so the two commands do not depend on
 * each other while they evolve.)
 */

/** The repository root (this file is tools/cli/src/loadtest/processes.ts). */
export const REPO_ROOT = resolve(__dirname, '../../../..');

export type AppName = 'server-executor' | 'planner' | 'client-agent';

/** Whether `taskset` can be run here. */
export function hasTaskset(): boolean {
  const r = spawnSync('taskset', ['-p', String(process.pid)], { encoding: 'utf8' });
  return r.status === 0;
}

/** Clock ticks per second of /proc/<pid>/stat times (`getconf CLK_TCK`, normally 100). */
export function clockTicks(): number {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const n = Number(r.stdout?.trim());
  return r.status === 0 && Number.isFinite(n) && n > 0 ? n : 100;
}

const TICKS = clockTicks();

/** User + system CPU time of a process (all its threads) so far, s; NaN when it cannot be read. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which is in parentheses and may hold spaces).
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    return (Number(f[11]) + Number(f[12])) / TICKS;
  } catch {
    return NaN;
  }
}

/**
 * Time the threads of a process spent runnable but waiting for a CPU so far, s
 * (/proc/<pid>/task/<tid>/schedstat, second field, summed over threads); NaN when it cannot
 * be read (no schedstat). Grows when the process's core is shared with other work.
 */
export function runQueueWaitSeconds(pid: number): number {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
      } catch {
        // The thread ended between the listing and the read: its time is gone with it.
      }
    }
    return ns / 1e9;
  } catch {
    return NaN;
  }
}

/** The CPU affinity list of a process (e.g. "0,1" or "0-1"), or undefined without taskset. */
export function affinityOf(pid: number): string | undefined {
  const r = spawnSync('taskset', ['-cp', String(pid)], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  return r.stdout.split(':').pop()?.trim();
}

/** Pins every thread of a process to `cpus` (a taskset list). Returns false when it could not. */
export function pinProcess(pid: number, cpus: string): boolean {
  return spawnSync('taskset', ['-a', '-cp', cpus, String(pid)], { encoding: 'utf8' }).status === 0;
}

/** A running service. */
export interface ServiceProcess {
  readonly name: string;
  readonly pid: number;
  readonly port: number;
  readonly addr: string;
  /** CPU seconds the process used so far. */
  cpuSeconds(): number;
  /** Seconds its threads waited for a CPU so far (see {@link runQueueWaitSeconds}). */
  runQueueWaitSeconds(): number;
  /** The last lines it wrote (stdout and stderr), for error messages. */
  tail(): string;
  /** SIGTERM, then SIGKILL after `graceMs` + 3 s. Idempotent. */
  stop(graceMs?: number): Promise<void>;
  readonly exited: Promise<number | null>;
}

export interface LaunchOptions {
  /** Label for errors and the log file, e.g. 'agent-phone'. */
  readonly name: string;
  readonly app: AppName;
  readonly env: Readonly<Record<string, string>>;
  /** taskset CPU list to pin to; undefined = not pinned. */
  readonly cpus?: string;
  /** Log file for the process's output; undefined keeps only the tail. */
  readonly logFile?: string;
  readonly startTimeoutMs?: number;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function killAllOnExit(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => { for (const c of live) c.kill('SIGKILL'); });
}

/**
 * Starts `apps/<app>/src/main.ts` with node + tsx and waits for its
 * `{"event":"listening",...,"port":N}` line on stdout.
 * @throws Error with the process's last output when it exits or stays silent.
 */
export async function launchService(opts: LaunchOptions): Promise<ServiceProcess> {
  const main = join(REPO_ROOT, 'apps', opts.app, 'src', 'main.ts');
  if (!existsSync(main)) throw new Error(`cannot find ${main}`);
  const nodeArgs = ['--require', require.resolve('tsx/cjs'), main];
  const [cmd, args] = opts.cpus !== undefined ? ['taskset', ['-c', opts.cpus, process.execPath, ...nodeArgs]] : [process.execPath, nodeArgs];
  const child = spawn(cmd, args, { cwd: REPO_ROOT, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  killAllOnExit();
  live.add(child);
  const log: WriteStream | undefined = opts.logFile ? createWriteStream(opts.logFile) : undefined;
  const lines: string[] = [];
  const keep = (s: string): void => { lines.push(s); if (lines.length > 30) lines.shift(); };
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((res) => child.once('exit', (code, signal) => {
    live.delete(child);
    exitCode = code ?? (signal ? -1 : null);
    log?.end();
    res(exitCode);
  }));
  let onPort: ((p: number) => void) | undefined;
  const portP = new Promise<number>((res) => { onPort = res; });
  let buf = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    log?.write(chunk);
    buf += chunk;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      keep(line);
      if (line.startsWith('{"event":"listening"')) {
        try { onPort?.((JSON.parse(line) as { port: number }).port); } catch { /* not the line */ }
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { log?.write(chunk); for (const l of chunk.split('\n')) if (l) keep(l); });
  const tail = (): string => lines.slice(-12).join('\n');
  const timeoutMs = opts.startTimeoutMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  const port = await Promise.race([
    portP,
    exited.then((code) => { throw new Error(`${opts.name} exited with code ${code} before listening:\n${tail()}`); }),
    new Promise<never>((_, rej) => { timer = setTimeout(() => rej(new Error(`${opts.name} did not report listening within ${timeoutMs} ms:\n${tail()}`)), timeoutMs); }),
  ]).catch(async (err: unknown) => { child.kill('SIGKILL'); await exited; throw err; }).finally(() => clearTimeout(timer));
  const stop = async (graceMs = 2000): Promise<void> => {
    if (exitCode !== undefined) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs + 3000);
    await exited;
    clearTimeout(t);
  };
  return { name: opts.name, pid: child.pid!, port, addr: `127.0.0.1:${port}`, cpuSeconds: () => cpuSeconds(child.pid!), runQueueWaitSeconds: () => runQueueWaitSeconds(child.pid!), tail, stop, exited };
}
