import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { connect, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';
import { Subjects } from '@tandem/protocol';
import {
  clientOptions,
  loadClientSecurity,
  loadServerSecurity,
  makeCertificates,
  natsServerConfig,
  natsServiceEnv,
  newSecret,
  serverSecurityConfig,
  upstreamSecurityConfig,
  writeTokensFile,
  type CertificateSet,
  type ClientSecurity,
  type NatsAuth,
  type NatsServerConfig,
  type ServerSecurity,
} from '@tandem/service-kit';
import { startNatsServer, type NatsServerHandle } from '@tandem/testkit';

// The credentials the end-to-end tests run the services with, as a deployment would
// (docs/security.md): one test file makes them once, in a private temporary directory, and gives
// every service its part, whether the service is a child process (environment variables, the
// way `tandem demo` sets them) or runs in the test's process (the same files, loaded with
// service-kit's loaders, as apps/*/test/security.int.spec.ts do):
//  - a fresh CA (`tandem certs`'s makeCertificates), its server certificate on every gRPC port
//    of the executor, the planner and the agents, each port requiring a client certificate
//    from that CA (mTLS);
//  - a tokens file (AUTH_TOKENS_FILE) with one token per client id, whose identity is that id,
//    and an operator token ('*') for the test's own calls (ListPlans, sessions and plan streams
//    under any id);
//  - a nats-server configuration from natsServerConfig (`tandem nats-config`): one user per
//    agent, per executor and for the planner, each allowed only its own subjects, and no
//    connection without credentials.
// The test itself plays devices and watches telemetry over NATS; it gets a user of its own
// (TAP_USER), allowed to publish and subscribe on the telemetry subjects only, so what it injects
// still goes through nats-server's authorization and the planner's subject checks.

/** The NATS user of the test itself: publishes and reads every telemetry subject, nothing else. */
export const TAP_USER = 'e2e-tap';

export interface CredentialOptions {
  /** Client-agent ids: each gets a NATS user and a token of its own identity. */
  readonly agents?: readonly string[];
  /** Server-executor ids (EXECUTOR_ID, ExecutorServer's serverId): each gets a NATS user. */
  readonly executors?: readonly string[];
  /** More client ids the test calls the executor or the planner as (a token each, no NATS user). */
  readonly clients?: readonly string[];
}

export interface TestCredentials {
  readonly dir: string;
  readonly certs: CertificateSet;
  /** AUTH_TOKENS_FILE of the executor, the planner and the agents. */
  readonly tokensFile: string;
  /** The operator token ('*'). */
  readonly operatorToken: string;
  /** The token whose identity is `id` (an agent's or one of `clients`). */
  token(id: string): string;

  /** Server side of a service in this process: TLS, client certificates required, the tokens. */
  serverSecurity(): ServerSecurity;
  /** Client side: trusts the CA, presents the client certificate, sends the token of `id` (the operator's when omitted). */
  clientSecurity(id?: string): ClientSecurity;
  /** A generated client's constructor arguments after the address: `new XClient(addr, ...clientArgs(id))`. */
  clientArgs(id?: string, base?: Partial<grpc.ClientOptions>): [grpc.ChannelCredentials, Partial<grpc.ClientOptions>];
  /** NATS credentials of the service with this id (`planner`, an executor's or an agent's id). */
  natsAuth(id: string): NatsAuth;

  /** TLS_* and AUTH_TOKENS_FILE of a service's own port (a child process). */
  serverEnv(): Record<string, string>;
  /** UPSTREAM_* of an agent: trust the CA, present the client certificate, send its own token. */
  upstreamEnv(id: string): Record<string, string>;
  /** NATS_USER and NATS_PASSWORD of the service with this id. */
  natsEnv(id: string): Record<string, string>;
  /** `tandem` CLI flags: --tls-ca, --tls-cert, --tls-key and the token of `id` (the operator's when omitted). */
  cliFlags(id?: string): string[];

  /** A nats-server with the generated configuration (users and permissions) and JetStream (the planner's state) on a free loopback port. */
  startNats(): Promise<NatsServerHandle>;
  /** Connects to `url` as the test (TAP_USER). */
  connectNats(url: string, opts?: Partial<ConnectionOptions>): Promise<NatsConnection>;
  /** Removes the directory (certificates, keys, tokens, NATS configuration). */
  remove(): void;
}

/** Adds the test's own user to a generated configuration (before the end of `authorization.users`). */
function withTapUser(cfg: NatsServerConfig, password: string): string {
  const telemetry = JSON.stringify(`${Subjects.telemetryRoot}.>`);
  const entry = `    # the test itself (e2e/test/credentials.ts)\n    { user: "${TAP_USER}", password: "${password}", permissions: { publish: { allow: [${telemetry}] }, subscribe: { allow: [${telemetry}] } } }`;
  const end = cfg.conf.lastIndexOf('\n  ]\n}');
  if (end < 0) throw new Error('internal: natsServerConfig no longer ends authorization.users with "  ]": update withTapUser');
  return `${cfg.conf.slice(0, end)}\n${entry}${cfg.conf.slice(end)}`;
}

/** Makes the certificates, tokens and NATS configuration in a new temporary directory (openssl, about 0.1 s). */
export function makeCredentials(opts: CredentialOptions = {}): TestCredentials {
  const agents = opts.agents ?? [];
  const executors = opts.executors ?? ['exec'];
  const dir = mkdtempSync(join(tmpdir(), 'tandem-e2e-creds-'));
  try {
    const certs = makeCertificates(join(dir, 'certs'), { days: 1 });
    const tokens = new Map([...agents, ...(opts.clients ?? [])].map((id) => [id, newSecret()]));
    const operatorToken = newSecret();
    const tokensFile = join(dir, 'tokens');
    writeTokensFile(tokensFile, tokens, operatorToken);
    const nats = natsServerConfig({ agents, executors, mode: 'password' });
    const tapPassword = newSecret();
    const natsConf = join(dir, 'nats-server.conf');
    writeFileSync(natsConf, withTapUser(nats, tapPassword), { mode: 0o600 });

    const token = (id: string): string => {
      const t = tokens.get(id);
      if (t === undefined) throw new Error(`internal: no token for '${id}': list it in makeCredentials' agents or clients`);
      return t;
    };
    const user = (id: string) => {
      const u = nats.users.find((x) => x.id === id);
      if (!u) throw new Error(`internal: no NATS user for '${id}': list it in makeCredentials' agents or executors`);
      return u;
    };
    const serverConfig = serverSecurityConfig(certs, tokensFile, true);
    const clientSecurity = (id?: string): ClientSecurity =>
      loadClientSecurity({
        caFile: certs.caCert,
        certFile: certs.clientCert,
        keyFile: certs.clientKey,
        token: id === undefined ? operatorToken : token(id),
      });
    return {
      dir,
      certs,
      tokensFile,
      operatorToken,
      token,
      serverSecurity: () => loadServerSecurity(serverConfig),
      clientSecurity,
      clientArgs: (id, base = {}) => {
        const sec = clientSecurity(id);
        return [sec.credentials, clientOptions(sec, base)];
      },
      natsAuth: (id) => {
        const e = natsServiceEnv(user(id));
        return { kind: 'password', user: e.NATS_USER, password: e.NATS_PASSWORD };
      },
      serverEnv: () => ({ ...serverConfig }),
      upstreamEnv: (id) => ({ ...upstreamSecurityConfig(certs, token(id)) }),
      natsEnv: (id) => natsServiceEnv(user(id)),
      cliFlags: (id) => [
        '--tls-ca',
        certs.caCert,
        '--tls-cert',
        certs.clientCert,
        '--tls-key',
        certs.clientKey,
        '--token',
        id === undefined ? operatorToken : token(id),
      ],
      startNats: () => startNatsServer({ configFile: natsConf, jetstream: true }),
      connectNats: (url, o = {}) => connect({ servers: url, user: TAP_USER, pass: tapPassword, ...o }),
      remove: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Makes credentials (makeCredentials(`opts`)) before the tests of the file or block that calls it, hands them to `use`, and removes them after. */
export function credentialsForSuite(opts: CredentialOptions, use: (creds: TestCredentials) => void): void {
  let creds: TestCredentials | undefined;
  beforeAll(() => {
    creds = makeCredentials(opts);
    use(creds);
  });
  afterAll(() => creds?.remove());
}
