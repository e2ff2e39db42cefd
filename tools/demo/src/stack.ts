import * as path from 'node:path';
import type { LaunchOptions } from '@tandem/launcher';
import {
  makeCertificates,
  newSecret,
  serverSecurityConfig,
  upstreamSecurityConfig,
  writeTokensFile,
  type CertificateSet,
  type ServerSecurityConfig,
  type UpstreamSecurityConfig,
} from '@tandem/service-kit';
import { DEMO_DEVICES, DEMO_REQUEST_CLASSES, DEMO_SLA_OVERRIDES, type DemoDevice } from './devices';
import { DEMO_EXECUTOR_ID } from './nats';

/** How often agents and the executor publish telemetry in the demo, so plans arrive fast. */
export const DEMO_TELEMETRY_INTERVAL_MS = 300;

/** TLS and tokens of the demo's services (makeDemoSecurity); absent = plaintext, no tokens. */
export interface DemoSecurity {
  readonly certs: CertificateSet;
  /** AUTH_TOKENS_FILE of the executor and the planner (and the agents' local APIs). */
  readonly tokensFile: string;
  /** Each device's token, by device id (its identity). */
  readonly agentTokens: Readonly<Record<string, string>>;
  /** An operator token ('*'): the demo's own ListPlans and its calls to the agents. */
  readonly operatorToken: string;
}

/**
 * A fresh CA, server and client certificates (openssl) and one random token per device plus
 * an operator token, under `dir`. Every port of the demo then serves TLS; the executor and the
 * planner also require client certificates (mTLS) and tokens, the agents' local APIs tokens.
 */
export function makeDemoSecurity(dir: string): DemoSecurity {
  const certs = makeCertificates(path.join(dir, 'certs'), { days: 1 });
  const agentTokens = Object.fromEntries(DEMO_DEVICES.map((d) => [d.id, newSecret()]));
  const operatorToken = newSecret();
  const tokensFile = path.join(dir, 'tokens');
  writeTokensFile(tokensFile, Object.entries(agentTokens), operatorToken);
  return { certs, tokensFile, agentTokens, operatorToken };
}

export interface StackOptions {
  readonly modelDir: string;
  readonly natsUrl: string;
  readonly security?: DemoSecurity;
  /** NATS credential variables of the service with this id (`planner`, the executor's or an agent's id); none when absent. */
  readonly natsEnv?: (id: string) => Record<string, string>;
}

function common(o: StackOptions, id: string): Record<string, string> {
  return { MODEL_DIR: o.modelDir, NATS_URL: o.natsUrl, ...o.natsEnv?.(id), LOG_LEVEL: 'warn' };
}

/** Server-side TLS (mTLS when `mtls`) and tokens of one service; nothing in plaintext. */
function serverTls(o: StackOptions, mtls: boolean): Partial<ServerSecurityConfig> {
  return o.security ? serverSecurityConfig(o.security.certs, o.security.tokensFile, mtls) : {};
}

// What each service is launched with; the launcher adds the rest of the environment (the
// inherited one, without any service variable, so the demo is the same everywhere) and checks
// it against the app's schema.

export function executorSpec(o: StackOptions): LaunchOptions {
  return {
    name: 'server-executor',
    app: 'server-executor',
    env: {
      ...common(o, DEMO_EXECUTOR_ID),
      ...serverTls(o, true),
      EXECUTOR_ADDR: '127.0.0.1:0',
      EXECUTOR_ID: DEMO_EXECUTOR_ID,
      EXECUTOR_THREADS: '1',
      TELEMETRY_INTERVAL_MS: String(DEMO_TELEMETRY_INTERVAL_MS),
      EXECUTOR_SHUTDOWN_GRACE_MS: '2000',
    },
  };
}

export function plannerSpec(o: StackOptions): LaunchOptions {
  return {
    name: 'planner',
    app: 'planner',
    env: {
      ...common(o, 'planner'),
      ...serverTls(o, true),
      PLANNER_ADDR: '127.0.0.1:0',
      PLANNER_REQUEST_CLASSES: JSON.stringify(DEMO_REQUEST_CLASSES),
      PLANNER_SLA_OVERRIDES: JSON.stringify(DEMO_SLA_OVERRIDES),
      // Always minimise server work under each device's SLA (what the planner does under load);
      // on an idle server it would pick the fastest placement, which hides the SLA trade-off.
      PLANNER_IDLE_UTILISATION: '0',
      // The live dashboard on a free port of 127.0.0.1 (the demo prints its URL).
      PLANNER_DASHBOARD_PORT: '0',
    },
  };
}

/** The agent's client side: trust the demo CA, present the client certificate, send its own token; nothing in plaintext. */
function upstreamTls(o: StackOptions, id: string): Partial<UpstreamSecurityConfig> {
  return o.security ? upstreamSecurityConfig(o.security.certs, o.security.agentTokens[id]) : {};
}

export function agentSpec(o: StackOptions, d: DemoDevice, executorAddr: string, plannerAddr: string): LaunchOptions {
  return {
    name: `agent-${d.id}`,
    app: 'client-agent',
    env: {
      ...common(o, d.id),
      ...serverTls(o, false),
      ...upstreamTls(o, d.id),
      AGENT_ID: d.id,
      AGENT_CLASS: d.clientClass,
      AGENT_ADDR: '127.0.0.1:0',
      AGENT_THREADS: '1',
      AGENT_SLOWDOWN: String(d.slowdown),
      AGENT_LINK_LATENCY_MS: String(d.linkLatencyMs),
      AGENT_LINK_UP_BYTES_PER_MS: String(d.upBytesPerMs),
      AGENT_LINK_DOWN_BYTES_PER_MS: String(d.downBytesPerMs),
      EXECUTOR_ADDR: executorAddr,
      PLANNER_ADDR: plannerAddr,
      TELEMETRY_INTERVAL_MS: String(DEMO_TELEMETRY_INTERVAL_MS),
      AGENT_SHUTDOWN_GRACE_MS: '2000',
    },
  };
}
