import { spawn, type ChildProcess, type ChildProcessByStdio } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { serviceEnv, type AppName } from './env';
import { cpuSeconds, rssBytes, runQueueWaitSeconds } from './proc';

/** The repository root (this file is tools/launcher/src/service.ts). */
export const REPO_ROOT = path.resolve(__dirname, '../../..');

/** How long a service may take from spawn to its `listening` line (model load, warm-up, profiling). */
export const LISTEN_TIMEOUT_MS = 60_000;
/** How long a service may drain after SIGTERM before it is killed. */
export const STOP_GRACE_MS = 5_000;

/** One app to run as its own Node process, configured through its environment. */
export interface LaunchOptions {
  /** Short name for messages and the log, e.g. `agent-phone`. */
  readonly name: string;
  readonly app: AppName;
  /** The app's variables this launch sets; the rest of the environment as {@link serviceEnv} makes it. */
  readonly env: Readonly<Record<string, string>>;
  /** Let the app's own variables of this process's environment through (see {@link serviceEnv}). */
  readonly fromShell?: boolean;
  /** taskset CPU list to pin it to; undefined = not pinned. */
  readonly cpus?: string;
  /** Where its output goes (stdout but the listening line, and stderr); none: only the tail is kept. */
  readonly logFile?: string;
  /** Called with every output line (stdout but the listening line, and stderr). */
  readonly onLine?: (line: string) => void;
  readonly listenTimeoutMs?: number;
  /**
   * A build output of `npm run build` (tools/scripts/build.mjs): run its compiled
   * `apps/<app>/src/main.js` with plain node, as the deploy image does. Undefined: the
   * TypeScript source through tsx.
   */
  readonly compiledDir?: string;
}

/** Children still running, killed if this process exits without stopping them. */
const live = new Set<ChildProcess>();
let exitHook = false;

/**
 * One service: `apps/<app>/src/main.ts` run with node and tsx (or its compiled `main.js`, see
 * {@link LaunchOptions.compiledDir}). Its stdout is scanned for the
 * `{"event":"listening",...,"port":N}` line; `listening` resolves with that port, or rejects
 * (naming the service, why, its log and its last lines) when it exits first, cannot be
 * started or stays silent. A process 'exit' hook kills it if this process ends without
 * stopping it.
 */
export class ServiceProcess {
  /** stdout and stderr are pipes (read line by line for the ready line and the log tail). */
  readonly child: ChildProcessByStdio<null, Readable, Readable>;
  readonly listening: Promise<number>;
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>;
  port = 0;
  /** The whole `listening` line (e.g. the planner's `dashboardUrl`); empty until it came. */
  announced: Readonly<Record<string, unknown>> = {};
  private readonly lines: string[] = [];
  private readonly log: WriteStream | undefined;

  constructor(readonly options: LaunchOptions) {
    const env = serviceEnv(options.app, options.env, { fromShell: options.fromShell });
    const node =
      options.compiledDir !== undefined
        ? [process.execPath, path.join(path.resolve(options.compiledDir), 'apps', options.app, 'src', 'main.js')]
        : [process.execPath, '--require', require.resolve('tsx/cjs'), path.join(REPO_ROOT, 'apps', options.app, 'src', 'main.ts')];
    const [cmd, ...args] = options.cpus !== undefined ? ['taskset', '-c', options.cpus, ...node] : node;
    this.child = spawn(cmd, args, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(this.child);
    if (!exitHook) {
      exitHook = true;
      process.on('exit', () => {
        for (const c of live) c.kill('SIGKILL');
      });
    }
    this.log = options.logFile ? createWriteStream(options.logFile, { flags: 'a' }) : undefined;
    this.exited = new Promise((resolve) =>
      this.child.once('exit', () => {
        live.delete(this.child);
        resolve();
      }),
    );
    this.child.once('close', () => this.log?.end());
    this.listening = new Promise<number>((resolve, reject) => {
      let done = false;
      const timeoutMs = options.listenTimeoutMs ?? LISTEN_TIMEOUT_MS;
      const timer = setTimeout(() => fail(`did not report listening within ${timeoutMs} ms`), timeoutMs);
      const fail = (why: string): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        const tail = this.tail(5);
        reject(new Error(`${options.name} ${why}${options.logFile ? `; log ${options.logFile}` : ''}${tail ? `:\n${tail}` : ''}`));
      };
      createInterface({ input: this.child.stdout }).on('line', (line) => {
        if (!done) {
          try {
            const m = JSON.parse(line) as { event?: string; port?: number };
            if (m.event === 'listening' && typeof m.port === 'number' && m.port > 0) {
              done = true;
              clearTimeout(timer);
              this.port = m.port;
              this.announced = m;
              resolve(m.port);
              return;
            }
          } catch {
            /* not JSON: an ordinary output line */
          }
        }
        this.keep(line);
        this.log?.write(`${line}\n`);
      });
      createInterface({ input: this.child.stderr }).on('line', (line) => {
        this.keep(line);
        this.log?.write(`${line}\n`);
      });
      this.child.once('error', (e) => fail(`could not be started (${e.message})`));
      // On 'close', once its output is read to the end, so the tail holds its last words.
      this.child.once('close', (code, signal) => fail(`exited ${signal ? `on ${signal}` : `with code ${code}`} before listening`));
    });
    // A rejection nobody awaited yet must not crash the process; callers await `listening`.
    this.listening.catch(() => undefined);
  }

  private keep(line: string): void {
    this.lines.push(line);
    if (this.lines.length > 30) this.lines.shift();
    this.options.onLine?.(line);
  }

  get name(): string {
    return this.options.name;
  }
  get pid(): number {
    return this.child.pid ?? 0;
  }
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Its last `n` output lines, for messages. */
  tail(n = 12): string {
    return this.lines.slice(-n).join('\n');
  }
  /** CPU seconds it used so far. */
  cpuSeconds(): number {
    return cpuSeconds(this.pid);
  }
  /** Seconds its threads waited for a CPU so far. */
  runQueueWaitSeconds(): number {
    return runQueueWaitSeconds(this.pid);
  }
  rssBytes(): number {
    return rssBytes(this.pid);
  }

  /** SIGTERM (the service drains), then SIGKILL after `graceMs`. Resolves when it has exited. */
  async stop(graceMs = STOP_GRACE_MS): Promise<{ killed: boolean }> {
    if (!this.running) return { killed: false };
    this.child.kill('SIGTERM');
    let killed = false;
    const t = setTimeout(() => {
      killed = true;
      this.child.kill('SIGKILL');
    }, graceMs);
    await this.exited;
    clearTimeout(t);
    return { killed };
  }

  /** Sends `signal` (SIGKILL: at once, no drain) and resolves when it has exited. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.running) this.child.kill(signal);
    await this.exited;
  }
}

/** Starts a service; await its `listening` before using it. @throws the schema's ConfigError for a bad environment. */
export function startService(options: LaunchOptions): ServiceProcess {
  return new ServiceProcess(options);
}

/** Starts a service and waits until it listens; kills it when it does not. */
export async function launchService(options: LaunchOptions): Promise<ServiceProcess> {
  const p = startService(options);
  try {
    await p.listening;
  } catch (err) {
    await p.kill();
    throw err;
  }
  return p;
}

/**
 * Stops services: the client-agents first (nothing depends on them), then the rest together.
 * Resolves with the names of those that had to be killed after `graceMs`.
 */
export async function stopServices(procs: readonly ServiceProcess[], graceMs = STOP_GRACE_MS): Promise<string[]> {
  const killed: string[] = [];
  const stopGroup = async (group: readonly ServiceProcess[]): Promise<void> => {
    const r = await Promise.all(group.map((p) => p.stop(graceMs)));
    r.forEach((x, i) => {
      if (x.killed) killed.push(group[i].name);
    });
  };
  await stopGroup(procs.filter((p) => p.options.app === 'client-agent'));
  await stopGroup(procs.filter((p) => p.options.app !== 'client-agent'));
  return killed;
}
