import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { appMain, REPO_ROOT, type AppName } from './paths';

/** What to launch: one app as its own Node process, configured through its environment. */
export interface ServiceSpec {
  /** Short name for messages and the log file name, e.g. `agent-phone`. */
  readonly name: string;
  readonly app: AppName;
  /** The whole environment of the process (the app's config.ts variables and PATH etc.). */
  readonly env: Readonly<Record<string, string>>;
}

/** How long a service may take from spawn to its `listening` line (model load, warm-up, profiling). */
export const LISTEN_TIMEOUT_MS = 60_000;
/** How long a service may drain after SIGTERM before it is killed. */
export const STOP_GRACE_MS = 5_000;

/** The last `n` lines of a file, for error messages; empty when it cannot be read. */
export function tailOf(file: string, n = 5): string {
  try {
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n').filter((l) => l.length > 0);
    return lines.slice(-n).join('\n');
  } catch {
    return '';
  }
}

/**
 * One running service. Its stdout is scanned for the `{"event":"listening",...,"port":N}` line;
 * every other stdout line and all of stderr go to `logFile`.
 */
export class ServiceProcess {
  readonly child: ChildProcess;
  readonly logFile: string;
  /** Resolves with the port from the listening line; rejects when the process exits first or times out. */
  readonly listening: Promise<number>;
  /** Resolves when the process has exited. */
  readonly exited: Promise<void>;
  port = 0;
  private readonly logFd: number;

  constructor(readonly spec: ServiceSpec, logDir: string) {
    this.logFile = path.join(logDir, `${spec.name}.log`);
    this.logFd = openSync(this.logFile, 'a');
    this.child = spawn(process.execPath, ['--require', 'tsx/cjs', appMain(spec.app)], {
      cwd: REPO_ROOT,
      env: spec.env,
      stdio: ['ignore', 'pipe', this.logFd],
    });
    this.exited = new Promise((resolve) => {
      if (this.child.exitCode !== null || this.child.signalCode !== null) resolve();
      else this.child.once('exit', () => resolve());
    });
    // The fd is closed when the process is gone; the child holds its own copy meanwhile.
    void this.exited.then(() => { try { closeSync(this.logFd); } catch { /* already closed */ } });
    this.listening = new Promise<number>((resolve, reject) => {
      const lines = createInterface({ input: this.child.stdout! });
      let done = false;
      const timer = setTimeout(() => fail(`did not report listening within ${LISTEN_TIMEOUT_MS} ms`), LISTEN_TIMEOUT_MS);
      const fail = (why: string): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        const tail = tailOf(this.logFile);
        reject(new Error(`${spec.name} ${why}; log ${this.logFile}${tail ? `:\n${tail}` : ''}`));
      };
      lines.on('line', (line) => {
        if (!done) {
          try {
            const m = JSON.parse(line) as { event?: string; port?: number };
            if (m.event === 'listening' && typeof m.port === 'number' && m.port > 0) {
              done = true;
              clearTimeout(timer);
              this.port = m.port;
              resolve(m.port);
              return;
            }
          } catch { /* not JSON: an ordinary output line */ }
        }
        try { writeSync(this.logFd, `${line}\n`); } catch { /* log closed after exit */ }
      });
      this.child.once('error', (e) => fail(`could not be started (${e.message})`));
      this.child.once('exit', (code, signal) => fail(`exited ${signal ? `on ${signal}` : `with code ${code}`} before listening`));
    });
    // A rejection nobody awaited yet must not crash the process; callers await `listening`.
    this.listening.catch(() => undefined);
  }

  get address(): string { return `127.0.0.1:${this.port}`; }
  get running(): boolean { return this.child.exitCode === null && this.child.signalCode === null; }

  /** SIGTERM (the service drains), then SIGKILL after `graceMs`. Resolves when it has exited. */
  async stop(graceMs = STOP_GRACE_MS): Promise<{ killed: boolean }> {
    if (!this.running) return { killed: false };
    this.child.kill('SIGTERM');
    let killed = false;
    const t = setTimeout(() => { killed = true; this.child.kill('SIGKILL'); }, graceMs);
    await this.exited;
    clearTimeout(t);
    return { killed };
  }

  /** Last resort (process exit): SIGKILL now, synchronously. */
  killNow(): void {
    if (this.running) this.child.kill('SIGKILL');
  }
}

/**
 * Every process the demo started. `stopAll` stops them in reverse start order groups; a
 * process 'exit' hook kills whatever is still running if the demo itself ends abruptly.
 */
export class ServiceSet {
  private readonly procs: ServiceProcess[] = [];
  private readonly onExit = (): void => { for (const p of this.procs) p.killNow(); };

  constructor(readonly logDir: string) {
    process.on('exit', this.onExit);
  }

  start(spec: ServiceSpec): ServiceProcess {
    const p = new ServiceProcess(spec, this.logDir);
    this.procs.push(p);
    return p;
  }

  get all(): readonly ServiceProcess[] { return this.procs; }

  /**
   * Stops the client-agents first (nothing depends on them), then the rest together.
   * Resolves with the names of processes that had to be killed.
   */
  async stopAll(graceMs = STOP_GRACE_MS): Promise<string[]> {
    const killed: string[] = [];
    const stopGroup = async (group: ServiceProcess[]): Promise<void> => {
      const r = await Promise.all(group.map((p) => p.stop(graceMs)));
      r.forEach((x, i) => { if (x.killed) killed.push(group[i].spec.name); });
    };
    await stopGroup(this.procs.filter((p) => p.spec.app === 'client-agent'));
    await stopGroup(this.procs.filter((p) => p.spec.app !== 'client-agent'));
    process.off('exit', this.onExit);
    return killed;
  }
}
