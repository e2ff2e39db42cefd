import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { natsServerConfig, natsServiceEnv } from '@tandem/service-kit';
import { canConnect, natsServerBinary, startNatsServer } from '@tandem/testkit';
import { DEMO_DEVICES } from './devices';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';
/** EXECUTOR_ID of the demo's server-executor (its NATS user when the demo runs NATS with credentials). */
export const DEMO_EXECUTOR_ID = 'demo-server';

/** No NATS the demo can use: a bad NATS_URL, or nothing there and no nats-server to start (bad input: `tandem demo` exits 2). */
export class NatsSetupError extends Error {
  override name = 'NatsSetupError';
}

/** The NATS server the demo uses. `stop` stops it when the demo started it, and does nothing otherwise. */
export interface DemoNats {
  readonly url: string;
  readonly startedHere: boolean;
  /** Whether the services connect with credentials (a nats-server the demo started with one user per service). */
  readonly withCredentials: boolean;
  /** The NATS credential variables of the service with this id (`planner`, the executor's or an agent's id); empty without credentials. */
  envFor(id: string): Record<string, string>;
  stop(): Promise<void>;
}

const NO_CREDENTIALS = (): Record<string, string> => ({});

/** host and port of a `nats://host:port` URL (port 4222 when omitted). @throws NatsSetupError naming NATS_URL. */
export function parseNatsUrl(url: string): { host: string; port: number } {
  let u: URL | undefined;
  try {
    u = new URL(url);
  } catch {
    /* below */
  }
  if (u?.protocol !== 'nats:' || !u.hostname) throw new NatsSetupError(`NATS_URL must be a URL like nats://host:port, given '${url}'`);
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : 4222 };
}

/** The nats-server binary to run, or undefined when there is none. */
export function findNatsServer(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const bin = natsServerBinary(env);
  if (bin.includes('/')) return existsSync(bin) ? bin : undefined;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (dir && existsSync(path.join(dir, bin))) return path.join(dir, bin);
  }
  return undefined;
}

/**
 * NATS at `url` when something accepts TCP there within `probeMs`; otherwise a nats-server
 * started on a free loopback port. @throws NatsSetupError when neither is possible.
 */
export async function ensureNats(url: string, opts: { probeMs?: number; log?: (line: string) => void; ownServer?: boolean } = {}): Promise<DemoNats> {
  const { host, port } = parseNatsUrl(url);
  if (!opts.ownServer && (await canConnect(host, port, opts.probeMs ?? 500))) {
    opts.log?.(`using NATS at ${url} (without credentials; --own-nats runs the demo's own nats-server with one user per service)`);
    return { url, startedHere: false, withCredentials: false, envFor: NO_CREDENTIALS, stop: async () => {} };
  }
  const bin = findNatsServer();
  if (!bin) {
    throw new NatsSetupError(
      `no NATS at NATS_URL=${url} and no nats-server binary (looked at $NATS_SERVER_BIN, /usr/sbin, /usr/bin, /usr/local/bin and PATH): ` +
        'install one (apt-get install nats-server) or set NATS_URL to a running server',
    );
  }
  const h = await startOwnNats();
  opts.log?.(
    `${opts.ownServer ? '--own-nats' : `no NATS at ${url}`}; started ${bin} at ${h.url} with one NATS user per service, each allowed only its own subjects (docs/security.md (NATS))`,
  );
  return h;
}

/**
 * A nats-server on a free loopback port with a configuration from `natsServerConfig`: a user
 * with a random password per demo service, allowed only its own subjects. The configuration
 * lives in a private temporary directory, removed on stop.
 */
async function startOwnNats(): Promise<DemoNats> {
  const cfg = natsServerConfig({ agents: DEMO_DEVICES.map((d) => d.id), executors: [DEMO_EXECUTOR_ID], mode: 'password' });
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-demo-nats-'));
  const configFile = path.join(dir, 'nats-server.conf');
  writeFileSync(configFile, cfg.conf, { mode: 0o600 });
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  process.on('exit', removeDir);
  // JetStream: the planner keeps its plans in key-value (PLANNER_STATE_BUCKET).
  const server = await startNatsServer({ configFile, jetstream: true }).catch((err: unknown) => {
    removeDir();
    throw err;
  });
  const envFor = (id: string): Record<string, string> => {
    const u = cfg.users.find((x) => x.id === id);
    if (!u) throw new Error(`internal: no NATS user for '${id}' in the demo's nats-server configuration`);
    return natsServiceEnv(u);
  };
  const stop = async (): Promise<void> => {
    process.off('exit', removeDir);
    removeDir();
    await server.stop();
  };
  return { url: server.url, startedHere: true, withCredentials: true, envFor, stop };
}
