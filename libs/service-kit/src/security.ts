// Transport security and caller authentication for every Tandem gRPC port (docs/security.md):
// TLS (optionally mutual) from PEM files named in the environment, and bearer tokens from a
// file, checked by a server interceptor. Everything here defaults to off (plaintext, no
// tokens), so a service configured with none of these variables behaves as before.
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { quoted } from '@tandem/protocol';
import type { CertificateSet } from './certs';
import { ConfigError, env } from './env';
import { StatusError } from './errors';

/** Metadata key of the bearer token (`authorization: Bearer <token>`). */
export const AUTH_METADATA_KEY = 'authorization';
/** The identity of an operator token (`<token> *`): acts for any client and may list every plan. */
export const OPERATOR_IDENTITY = '*';
/** Shortest token the tokens file accepts (a guessable token is no credential). */
export const MIN_TOKEN_LENGTH = 16;

/**
 * A fresh secret (bearer token or NATS password): 192 random bits, base64url, behind a `tdm_`
 * prefix so that it never starts with `-` (a command line would take `--token -x…` for two options).
 */
export function newSecret(): string {
  return `tdm_${randomBytes(24).toString('base64url')}`;
}

const IDENTITY_PATTERN = /^([A-Za-z0-9_-]{1,64}|\*)$/;

/** The server side of a gRPC port: its certificate, client certificates, tokens. Spread into a service's env schema. */
export const serverSecurityEnv = {
  TLS_CERT_FILE: env.string('PEM certificate chain of this gRPC port; set with TLS_KEY_FILE to serve TLS (empty = plaintext)', ''),
  TLS_KEY_FILE: env.string('PEM private key of TLS_CERT_FILE', ''),
  TLS_CA_FILE: env.string('PEM CA bundle that client certificates must chain to (needed by TLS_CLIENT_AUTH=require)', ''),
  TLS_CLIENT_AUTH: env.oneOf("'require': a client must present a certificate issued by TLS_CA_FILE (mTLS); 'none': any TLS client", 'none', [
    'none',
    'require',
  ]),
  AUTH_TOKENS_FILE: env.string(
    "File of bearer tokens, one 'TOKEN CLIENT_ID' per line ('#' comments; CLIENT_ID '*' is an operator token); set = every call but health checks needs 'authorization: Bearer TOKEN' (empty = no tokens)",
    '',
  ),
};

/** The client side of a service's calls to other Tandem services. Spread into a service's env schema. */
export const upstreamSecurityEnv = {
  UPSTREAM_TLS_CA_FILE: env.string('PEM CA bundle to trust for the executor and the planner; set = connect to them over TLS (empty = plaintext)', ''),
  UPSTREAM_TLS_CERT_FILE: env.string(
    'PEM client certificate for the executor and the planner (their TLS_CLIENT_AUTH=require); set with UPSTREAM_TLS_KEY_FILE',
    '',
  ),
  UPSTREAM_TLS_KEY_FILE: env.string('PEM private key of UPSTREAM_TLS_CERT_FILE', ''),
  UPSTREAM_TOKEN: env.string("Bearer token sent to the executor and the planner (their AUTH_TOKENS_FILE maps it to this agent's id); empty = none", ''),
};

export interface ServerSecurityConfig {
  readonly TLS_CERT_FILE: string;
  readonly TLS_KEY_FILE: string;
  readonly TLS_CA_FILE: string;
  readonly TLS_CLIENT_AUTH: 'none' | 'require';
  readonly AUTH_TOKENS_FILE: string;
}

export interface UpstreamSecurityConfig {
  readonly UPSTREAM_TLS_CA_FILE: string;
  readonly UPSTREAM_TLS_CERT_FILE: string;
  readonly UPSTREAM_TLS_KEY_FILE: string;
  readonly UPSTREAM_TOKEN: string;
}

/** The server side, loaded: credentials to bind with and the token table (undefined: no tokens). */
export interface ServerSecurity {
  readonly credentials: grpc.ServerCredentials;
  readonly tls: boolean;
  readonly mtls: boolean;
  readonly tokens?: TokenTable;
}

/** The client side, loaded: credentials to connect with and the token to send. */
export interface ClientSecurity {
  readonly credentials: grpc.ChannelCredentials;
  readonly tls: boolean;
  readonly token?: string;
}

/** Reads a file for `variable`; a problem is pushed, naming the variable and the path. */
function readVar(problems: string[], variable: string, path: string): Buffer | undefined {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    problems.push(`${variable} must name a readable file, given ${quoted(path)} (${code === 'ENOENT' ? 'no such file' : (code ?? (err as Error).message)})`);
    return undefined;
  }
}

/** Checks that PEM material parses (and that a key matches its certificate); a problem names the variables and paths. */
function checkPem(problems: string[], what: string, opts: { cert?: Buffer; key?: Buffer; ca?: Buffer }): boolean {
  try {
    createSecureContext(opts);
    return true;
  } catch (err) {
    problems.push(`${what} must hold valid PEM (${String((err as Error).message).slice(0, 200)})`);
    return false;
  }
}

/** TLS material of one side: certificate+key (both or neither) and a CA bundle. */
function loadPair(problems: string[], names: { cert: string; key: string }, paths: { cert: string; key: string }): { cert: Buffer; key: Buffer } | undefined {
  if (!paths.cert && !paths.key) return undefined;
  if (!paths.cert || !paths.key) {
    problems.push(
      paths.cert
        ? `${names.key} is required when ${names.cert} is set, given ${names.cert}='${paths.cert}'`
        : `${names.cert} is required when ${names.key} is set, given ${names.key}='${paths.key}'`,
    );
    return undefined;
  }
  const cert = readVar(problems, names.cert, paths.cert);
  const key = readVar(problems, names.key, paths.key);
  if (!cert || !key) return undefined;
  if (!checkCertificates(problems, `${names.cert}='${paths.cert}'`, cert)) return undefined;
  return checkPem(problems, `${names.cert}='${paths.cert}' and ${names.key}='${paths.key}'`, { cert, key }) ? { cert, key } : undefined;
}

/** Checks that `pem` holds at least one certificate and that each parses (OpenSSL skips what is not PEM without a word). */
function checkCertificates(problems: string[], what: string, pem: Buffer): boolean {
  const blocks = pem.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) {
    problems.push(`${what} must hold at least one PEM certificate (-----BEGIN CERTIFICATE-----), given none`);
    return false;
  }
  for (const [i, b] of blocks.entries()) {
    try {
      new X509Certificate(b);
    } catch (err) {
      problems.push(
        `${what} must hold valid PEM certificates, given one that does not parse (certificate ${i + 1}: ${String((err as Error).message).slice(0, 200)})`,
      );
      return false;
    }
  }
  return true;
}

function loadCa(problems: string[], name: string, path: string): Buffer | undefined {
  if (!path) return undefined;
  const ca = readVar(problems, name, path);
  if (!ca) return undefined;
  const what = `${name}='${path}'`;
  return checkCertificates(problems, what, ca) && checkPem(problems, what, { ca }) ? ca : undefined;
}

/**
 * Loads the server side of a gRPC port from its configuration: plaintext when no file is
 * named, TLS with TLS_CERT_FILE + TLS_KEY_FILE, mTLS with TLS_CLIENT_AUTH=require (and
 * TLS_CA_FILE), bearer tokens with AUTH_TOKENS_FILE.
 * @throws ConfigError naming every variable whose file is missing, unreadable or malformed, with its path.
 */
export function loadServerSecurity(cfg: ServerSecurityConfig): ServerSecurity {
  const problems: string[] = [];
  const pair = loadPair(problems, { cert: 'TLS_CERT_FILE', key: 'TLS_KEY_FILE' }, { cert: cfg.TLS_CERT_FILE, key: cfg.TLS_KEY_FILE });
  const ca = loadCa(problems, 'TLS_CA_FILE', cfg.TLS_CA_FILE);
  const mtls = cfg.TLS_CLIENT_AUTH === 'require';
  if (mtls && !cfg.TLS_CA_FILE) problems.push("TLS_CA_FILE is required when TLS_CLIENT_AUTH is 'require' (the CA client certificates must chain to)");
  if (mtls && !cfg.TLS_CERT_FILE && !cfg.TLS_KEY_FILE)
    problems.push("TLS_CERT_FILE and TLS_KEY_FILE are required when TLS_CLIENT_AUTH is 'require' (mTLS is TLS)");
  let tokens: TokenTable | undefined;
  if (cfg.AUTH_TOKENS_FILE) {
    const text = readVar(problems, 'AUTH_TOKENS_FILE', cfg.AUTH_TOKENS_FILE);
    if (text) {
      try {
        tokens = TokenTable.parse(text.toString('utf8'));
      } catch (err) {
        problems.push(`AUTH_TOKENS_FILE=${quoted(cfg.AUTH_TOKENS_FILE)}: ${(err as Error).message}`);
      }
    }
  }
  if (problems.length) throw new ConfigError(problems);
  const credentials = pair
    ? grpc.ServerCredentials.createSsl(ca ?? null, [{ cert_chain: pair.cert, private_key: pair.key }], mtls)
    : grpc.ServerCredentials.createInsecure();
  return { credentials, tls: !!pair, mtls: !!pair && mtls, tokens };
}

/** Client-side material given directly (CLI flags, tests): file paths, each named by `names` in messages. */
export interface ClientSecurityFiles {
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly token?: string;
  /** How each is called in messages (an env variable or a flag). */
  readonly names?: { ca?: string; cert?: string; key?: string; token?: string };
}

/**
 * Loads the client side of calls to a Tandem service: plaintext when no CA is named, TLS
 * trusting `caFile` otherwise, with a client certificate when `certFile` and `keyFile` are set.
 * @throws ConfigError naming every variable or flag whose file is missing or malformed, with its path.
 */
export function loadClientSecurity(f: ClientSecurityFiles): ClientSecurity {
  const n = { ca: 'UPSTREAM_TLS_CA_FILE', cert: 'UPSTREAM_TLS_CERT_FILE', key: 'UPSTREAM_TLS_KEY_FILE', token: 'UPSTREAM_TOKEN', ...f.names };
  const problems: string[] = [];
  const ca = loadCa(problems, n.ca, f.caFile ?? '');
  const pair = loadPair(problems, { cert: n.cert, key: n.key }, { cert: f.certFile ?? '', key: f.keyFile ?? '' });
  if (pair && !f.caFile) problems.push(`${n.ca} is required when ${n.cert} is set (a client certificate is only sent over TLS)`);
  const token = f.token ?? '';
  if (token && !/^[\x21-\x7e]+$/.test(token)) problems.push(`${n.token} must be printable ASCII without spaces, given ${token.length} characters`);
  if (problems.length) throw new ConfigError(problems);
  const credentials = ca ? grpc.credentials.createSsl(ca, pair?.key ?? null, pair?.cert ?? null) : grpc.credentials.createInsecure();
  return { credentials, tls: !!ca, token: token || undefined };
}

/** loadClientSecurity from a service's UPSTREAM_* variables. */
export function loadUpstreamSecurity(cfg: UpstreamSecurityConfig): ClientSecurity {
  return loadClientSecurity({
    caFile: cfg.UPSTREAM_TLS_CA_FILE,
    certFile: cfg.UPSTREAM_TLS_CERT_FILE,
    keyFile: cfg.UPSTREAM_TLS_KEY_FILE,
    token: cfg.UPSTREAM_TOKEN,
  });
}

/** Client options that send `token` as `authorization: Bearer <token>` on every call (none when undefined). */
export function bearerOptions(token: string | undefined): Partial<grpc.ClientOptions> {
  if (!token) return {};
  const value = `Bearer ${token}`;
  const interceptor: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set(AUTH_METADATA_KEY, value);
        next(metadata, listener);
      },
    });
  return { interceptors: [interceptor] };
}

/** The options of a client for `sec`: its bearer token (merged over `base`, keeping base interceptors). */
export function clientOptions(sec: ClientSecurity | undefined, base: Partial<grpc.ClientOptions> = {}): Partial<grpc.ClientOptions> {
  const auth = bearerOptions(sec?.token);
  if (!auth.interceptors) return base;
  return { ...base, interceptors: [...((base.interceptors as grpc.Interceptor[] | undefined) ?? []), ...auth.interceptors] };
}

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Refusal of a call by the token check: UNAUTHENTICATED or PERMISSION_DENIED, with a message naming the rule. */
export class AuthError extends StatusError {
  override name = 'AuthError';
  constructor(
    override readonly code: grpc.status.UNAUTHENTICATED | grpc.status.PERMISSION_DENIED,
    message: string,
  ) {
    super(code, message);
  }
}

/**
 * Bearer tokens and the client identity each grants. Tokens are kept as SHA-256 digests
 * only (a heap dump or log line shows no token), looked up by digest.
 */
export class TokenTable {
  private constructor(private readonly byDigest: ReadonlyMap<string, string>) {}

  get size(): number {
    return this.byDigest.size;
  }

  /** From pairs (tests). */
  static of(entries: Record<string, string>): TokenTable {
    return TokenTable.parse(
      Object.entries(entries)
        .map(([t, id]) => `${t} ${id}`)
        .join('\n'),
    );
  }

  /**
   * Parses a tokens file: one `TOKEN CLIENT_ID` per line, blank lines and `#` comments ignored.
   * @throws Error naming the line and the rule (never the token).
   */
  static parse(text: string): TokenTable {
    const map = new Map<string, string>();
    const lines = text.split(/\r?\n/);
    for (const [i, raw] of lines.entries()) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      const parts = line.split(/\s+/);
      const at = `line ${i + 1}`;
      if (parts.length !== 2) throw new Error(`${at} must be 'TOKEN CLIENT_ID' (two fields), given ${parts.length} field(s)`);
      const [token, id] = parts;
      if (token.length < MIN_TOKEN_LENGTH || !/^[\x21-\x7e]+$/.test(token))
        throw new Error(`${at}: the token must be at least ${MIN_TOKEN_LENGTH} printable ASCII characters, given ${token.length}`);
      if (!IDENTITY_PATTERN.test(id))
        throw new Error(`${at}: the client id must be 1..64 letters, digits, - or _ (or '*' for an operator), given '${id.slice(0, 80)}'`);
      const d = sha256(token);
      if (map.has(d)) throw new Error(`${at}: the token must be unique, given one already on an earlier line`);
      map.set(d, id);
    }
    if (map.size === 0) throw new Error('must hold at least one token line (an empty file would lock every caller out)');
    return new TokenTable(map);
  }

  /** The identity of `token`, or undefined. */
  identityOf(token: string): string | undefined {
    return this.byDigest.get(sha256(token));
  }

  /**
   * The identity a call's metadata authenticates.
   * @throws AuthError UNAUTHENTICATED when the header is missing, malformed or names no known token.
   */
  authenticate(metadata: grpc.Metadata): string {
    const values = metadata.get(AUTH_METADATA_KEY);
    if (values.length === 0) throw new AuthError(grpc.status.UNAUTHENTICATED, "metadata 'authorization' must be 'Bearer <token>', given none");
    if (values.length > 1) throw new AuthError(grpc.status.UNAUTHENTICATED, `metadata 'authorization' must appear once, given ${values.length} values`);
    const m = /^Bearer ([\x21-\x7e]+)$/.exec(String(values[0]));
    if (!m) throw new AuthError(grpc.status.UNAUTHENTICATED, "metadata 'authorization' must be 'Bearer <token>', given another form");
    const id = this.identityOf(m[1]);
    if (id === undefined)
      throw new AuthError(
        grpc.status.UNAUTHENTICATED,
        "metadata 'authorization' must carry a token this server knows (AUTH_TOKENS_FILE), given an unknown token",
      );
    return id;
  }
}

/**
 * Whether `identity` may act for client `clientId` (its own, or any for an operator).
 * @throws AuthError PERMISSION_DENIED naming `field` (its proto name, e.g. `open.client_id`) and the identity when it may not.
 */
export function checkIdentity(identity: string | undefined, field: string, clientId: string): void {
  if (identity === undefined || identity === OPERATOR_IDENTITY || identity === clientId) return;
  const given = clientId.length > 64 ? `'${clientId.slice(0, 64)}…' (${clientId.length} characters)` : `'${clientId}'`;
  throw new AuthError(grpc.status.PERMISSION_DENIED, `${field} must be the caller's own client id '${identity}' (its token's identity), given ${given}`);
}

/** Methods every caller may use without a token: health checks (load balancers, probes). */
const OPEN_PATH_PREFIX = '/grpc.health.v1.Health/';

/**
 * A server interceptor that refuses, with UNAUTHENTICATED, every call but health checks whose
 * metadata carries no known bearer token. Handlers then learn the caller's identity with
 * `tokens.authenticate(call.metadata)` for their per-field checks.
 */
export function tokenInterceptor(tokens: TokenTable): grpc.ServerInterceptor {
  return (method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, mdNext) {
            if (method.path.startsWith(OPEN_PATH_PREFIX)) {
              mdNext(metadata);
              return;
            }
            try {
              tokens.authenticate(metadata);
            } catch (err) {
              if (!(err instanceof AuthError)) throw err;
              call.sendStatus({ code: err.code, details: `${err.message} (${method.path})` });
              return;
            }
            mdNext(metadata);
          },
        });
      },
    });
}

/** Server options that add the token interceptor when `tokens` is set. */
export function serverAuthOptions(tokens: TokenTable | undefined): Partial<grpc.ServerOptions> {
  return tokens ? { interceptors: [tokenInterceptor(tokens)] } : {};
}

/** Binds `server` to host:port with `credentials` (port 0 picks a free one); resolves with the bound port. */
export function bindServer(server: grpc.Server, address: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise<number>((resolve, reject) => server.bindAsync(address, credentials, (err, port) => (err ? reject(err) : resolve(port))));
}

/** Writes `file` (mode 0600): one 'TOKEN ID' line per entry of `tokens` (id → token), then `operatorToken` as the operator ('*'). */
export function writeTokensFile(file: string, tokens: Iterable<readonly [id: string, token: string]>, operatorToken: string): void {
  const lines = [...[...tokens].map(([id, t]) => `${t} ${id}`), `${operatorToken} *`];
  writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
}

/**
 * A service's own port on `certs`: TLS with the server certificate, client certificates of
 * the CA required when `mtls`, and the tokens of `tokensFile` (what the demo and the end-to-end
 * tests run a service with, as deployed: docs/security.md).
 */
export const serverSecurityConfig = (certs: CertificateSet, tokensFile: string, mtls: boolean): ServerSecurityConfig => ({
  TLS_CERT_FILE: certs.serverCert,
  TLS_KEY_FILE: certs.serverKey,
  TLS_CA_FILE: certs.caCert,
  TLS_CLIENT_AUTH: mtls ? 'require' : 'none',
  AUTH_TOKENS_FILE: tokensFile,
});

/** An agent's calls upstream on `certs`: trust the CA, present the client certificate, send `token`. */
export const upstreamSecurityConfig = (certs: CertificateSet, token: string): UpstreamSecurityConfig => ({
  UPSTREAM_TLS_CA_FILE: certs.caCert,
  UPSTREAM_TLS_CERT_FILE: certs.clientCert,
  UPSTREAM_TLS_KEY_FILE: certs.clientKey,
  UPSTREAM_TOKEN: token,
});
