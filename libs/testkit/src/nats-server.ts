import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from '@tandem/util';
import { canConnect, freePort } from './ports';

/** A nats-server process started for a test. */
export interface NatsServerHandle {
  /** `nats://127.0.0.1:PORT`. */
  readonly url: string;
  readonly port: number;
  /** With `jetstream`: the temporary JetStream store directory (removed by `stop`). */
  readonly storeDir?: string;
  /** Stops the process (SIGTERM, then SIGKILL after 2 s) and removes its JetStream store. Idempotent. */
  stop(): Promise<void>;
  /** Stops it and starts a new one on the same port (and the same JetStream store), as after a crash and restart. */
  restart(): Promise<void>;
}

/** Path of the nats-server binary: $NATS_SERVER_BIN, /usr/sbin/nats-server, or from PATH. */
export function natsServerBinary(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NATS_SERVER_BIN) return env.NATS_SERVER_BIN;
  for (const p of ['/usr/sbin/nats-server', '/usr/bin/nats-server', '/usr/local/bin/nats-server']) if (existsSync(p)) return p;
  return 'nats-server';
}

async function waitForPort(port: number, timeoutMs: number, gaveUp: () => boolean = () => false): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!gaveUp() && !(await canConnect('127.0.0.1', port, 1000))) {
    if (Date.now() > until) throw new Error(`nats-server did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
    await sleep(50);
  }
}

export interface StartNatsServerOptions {
  port?: number;
  timeoutMs?: number;
  /**
   * A nats-server configuration file (`-c`), e.g. one from service-kit's `natsServerConfig`
   * with users and permissions; the loopback address and port still come from here.
   */
  configFile?: string;
  /** Extra environment of the server (a configuration may read passwords from it). */
  env?: NodeJS.ProcessEnv;
  /**
   * Enables JetStream (`-js`) with its store in a new temporary directory, kept across
   * `restart` and removed by `stop`.
   */
  jetstream?: boolean;
}

/**
 * Starts a real nats-server on a free loopback port and waits until it accepts
 * connections. The caller must `stop()` it; it is killed if this process exits first.
 */
export async function startNatsServer(opts: StartNatsServerOptions = {}): Promise<NatsServerHandle> {
  const port = opts.port ?? (await freePort());
  const bin = natsServerBinary();
  let child: ChildProcess | undefined;
  const storeDir = opts.jetstream ? mkdtempSync(join(tmpdir(), 'tandem-nats-js-')) : undefined;
  const launch = async (): Promise<void> => {
    const args = [...(opts.configFile ? ['-c', opts.configFile] : []), '-a', '127.0.0.1', '-p', String(port), ...(storeDir ? ['-js', '-sd', storeDir] : [])];
    const c = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...opts.env } });
    child = c;
    let stderr = '';
    c.stderr?.on('data', (b: Buffer) => {
      if (stderr.length < 4096) stderr += b.toString('utf8');
    });
    let ended = false;
    const failed = new Promise<never>((_, reject) => {
      c.once('error', (e) => {
        ended = true;
        reject(new Error(`cannot start ${bin}: ${e.message}`));
      });
      // A configuration the server refuses ends it at once; say why instead of timing out.
      c.once('exit', (code) => {
        ended = true;
        reject(new Error(`${bin} ${args.join(' ')} exited with ${code}: ${stderr.trim().slice(0, 500)}`));
      });
    });
    failed.catch(() => undefined);
    await Promise.race([waitForPort(port, opts.timeoutMs ?? 5000, () => ended), failed]);
  };
  const killNow = (): void => {
    child?.kill('SIGKILL');
  };
  const halt = async (): Promise<void> => {
    const c = child;
    child = undefined;
    process.off('exit', killNow);
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(t);
  };
  const removeStore = (): void => {
    if (storeDir) rmSync(storeDir, { recursive: true, force: true });
  };
  const stop = async (): Promise<void> => {
    await halt();
    removeStore();
  };
  const start = async (): Promise<void> => {
    process.on('exit', killNow);
    await launch().catch(async (err: unknown) => {
      await halt();
      throw err;
    });
  };
  await start().catch((err: unknown) => {
    removeStore();
    throw err;
  });
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    ...(storeDir ? { storeDir } : {}),
    stop,
    restart: async () => {
      await halt();
      await start();
    },
  };
}
