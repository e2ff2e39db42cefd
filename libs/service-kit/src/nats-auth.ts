import { readFileSync } from 'node:fs';
import { connect, nkeyAuthenticator, type ConnectionOptions } from '@nats-io/transport-node';
import { quoted } from '@tandem/protocol';
import { ConfigError, env } from './env';

/**
 * How a service proves who it is to nats-server (docs/security.md (NATS)): a user and password
 * (`authorization.users` in the server's configuration, see {@link natsServerConfig}), or an
 * NKEY whose seed is in a file (the server holds only the public key). Undefined: no
 * credentials (a nats-server without authorization).
 */
export type NatsAuth =
  | { readonly kind: 'password'; readonly user: string; readonly password: string }
  | { readonly kind: 'nkey'; readonly seedFile: string; readonly seed: Uint8Array };

/** The NATS credential variables every service reads (README env tables). */
export const natsAuthEnv = {
  NATS_USER: env.pattern(
    'NATS user this service connects as (with NATS_PASSWORD); empty connects without credentials (docs/security.md (NATS))',
    '',
    /^[A-Za-z0-9_-]{1,64}$/,
    '1..64 letters, digits, - or _',
  ),
  NATS_PASSWORD: env.string('Password of NATS_USER', ''),
  NATS_NKEY_SEED_FILE: env.string("File holding this service's NATS NKEY user seed (SU...), instead of NATS_USER/NATS_PASSWORD", ''),
};

/** The values of {@link natsAuthEnv} as a service's loaded configuration holds them. */
export interface NatsAuthValues {
  readonly NATS_USER: string;
  readonly NATS_PASSWORD: string;
  readonly NATS_NKEY_SEED_FILE: string;
}

/**
 * The credentials a service's configuration names, checked together: NATS_USER and
 * NATS_PASSWORD come as a pair, NATS_NKEY_SEED_FILE excludes them and must hold a user seed.
 * @throws ConfigError naming the variables and the rule broken (the password is never shown).
 */
export function natsAuthFrom(c: NatsAuthValues): NatsAuth | undefined {
  const problems: string[] = [];
  const user = c.NATS_USER;
  const pass = c.NATS_PASSWORD;
  const seedFile = c.NATS_NKEY_SEED_FILE;
  if (seedFile !== '' && (user !== '' || pass !== ''))
    problems.push(
      `NATS_NKEY_SEED_FILE and NATS_USER/NATS_PASSWORD are exclusive: give one kind of credential, given NATS_NKEY_SEED_FILE ${quoted(seedFile)} and NATS_USER ${quoted(user)}`,
    );
  else if (user !== '' && pass === '') problems.push(`NATS_PASSWORD is required when NATS_USER is set, given NATS_USER ${quoted(user)} and no NATS_PASSWORD`);
  else if (user === '' && pass !== '') problems.push('NATS_USER is required when NATS_PASSWORD is set (the password is not shown)');
  if (problems.length) throw new ConfigError(problems);
  if (seedFile !== '') {
    let text: string;
    try {
      text = readFileSync(seedFile, 'utf8');
    } catch (err) {
      throw new ConfigError([
        `NATS_NKEY_SEED_FILE must name a readable file, given ${quoted(seedFile)} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      ]);
    }
    const seed = /\bSU[A-Z2-7]{56}\b/.exec(text)?.[0];
    if (!seed) throw new ConfigError([`NATS_NKEY_SEED_FILE must hold an NKEY user seed (58 characters starting with SU), given ${quoted(seedFile)}`]);
    return { kind: 'nkey', seedFile, seed: new TextEncoder().encode(seed) };
  }
  if (user !== '') return { kind: 'password', user, password: pass };
  return undefined;
}

/** The connect options carrying `auth` (none when undefined). */
export function natsConnectAuth(auth: NatsAuth | undefined): Partial<ConnectionOptions> {
  if (!auth) return {};
  if (auth.kind === 'password') return { user: auth.user, pass: auth.password };
  return { authenticator: nkeyAuthenticator(auth.seed) };
}

/** Which credential was refused, for error messages (never the secret). */
export function describeNatsAuth(auth: NatsAuth | undefined): string {
  if (!auth) return 'no credentials (NATS_USER and NATS_NKEY_SEED_FILE are unset)';
  return auth.kind === 'password' ? `NATS_USER '${auth.user}' with its NATS_PASSWORD` : `the NKEY seed in NATS_NKEY_SEED_FILE '${auth.seedFile}'`;
}

/** Whether `err` is nats-server refusing a connection's credentials. */
export function isNatsAuthError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === 'AuthorizationError' || err.name === 'UserAuthenticationExpiredError') return true;
  const cause = (err as { cause?: unknown }).cause;
  return /authorization violation|authentication/i.test(err.message) || (cause !== undefined && cause !== err && isNatsAuthError(cause));
}

/** The ConfigError a refused credential becomes: it names the server, the variables and the server's reason. */
export function natsAuthRefused(url: string, auth: NatsAuth | undefined, err: unknown): ConfigError {
  const reason = err instanceof Error ? err.message : String(err);
  return new ConfigError([
    `NATS at ${url} refused ${describeNatsAuth(auth)}: ${reason.slice(0, 200)} (check the credentials against the nats-server configuration, docs/security.md (NATS))`,
  ]);
}

/**
 * Tries the credentials once at startup, so a wrong password or key stops the service with a
 * clear error instead of a service that runs without telemetry. A server that does not answer
 * (not up yet, or gone) is not an error here: the services keep connecting in the background.
 * @throws ConfigError (exit code 2) when the server refuses the credentials.
 */
export async function checkNatsCredentials(url: string, auth: NatsAuth | undefined, opts: { timeoutMs?: number } = {}): Promise<void> {
  let nc;
  try {
    nc = await connect({ servers: url, name: 'credential-check', timeout: opts.timeoutMs ?? 2000, reconnect: false, ...natsConnectAuth(auth) });
  } catch (err) {
    if (isNatsAuthError(err)) throw natsAuthRefused(url, auth, err);
    return;
  }
  await nc.close().catch(() => undefined);
}
