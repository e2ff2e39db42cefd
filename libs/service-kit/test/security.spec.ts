import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  checkIdentity,
  loadClientSecurity,
  loadServerSecurity,
  makeCertificates,
  newSecret,
  TokenTable,
  writeTokensFile,
  type CertificateSet,
  type ServerSecurityConfig,
} from '../src';
import { problemsOf } from './config-problems';

const ROOT = path.join(__dirname, '../../..');
const none: ServerSecurityConfig = { TLS_CERT_FILE: '', TLS_KEY_FILE: '', TLS_CA_FILE: '', TLS_CLIENT_AUTH: 'none', AUTH_TOKENS_FILE: '' };

describe('TLS and token configuration (service-kit security)', () => {
  let dir: string;
  let certs: CertificateSet;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-sec-'));
    certs = makeCertificates(path.join(dir, 'certs'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('makes a CA, server and client certificates with private keys mode 0600', () => {
    for (const f of [certs.caKey, certs.serverKey, certs.clientKey]) expect(statSync(f).mode & 0o777).toBe(0o600);
    const ca = new X509Certificate(readFileSync(certs.caCert));
    const server = new X509Certificate(readFileSync(certs.serverCert));
    expect(server.verify(ca.publicKey)).toBe(true);
    expect(server.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(server.checkHost('localhost')).toBe('localhost');
    expect(ca.ca).toBe(true);
  });

  it('defaults to plaintext without tokens', () => {
    const s = loadServerSecurity(none);
    expect({ tls: s.tls, mtls: s.mtls, tokens: s.tokens }).toEqual({ tls: false, mtls: false, tokens: undefined });
    expect(loadClientSecurity({}).tls).toBe(false);
  });

  it('loads TLS and mTLS from the files', () => {
    expect(loadServerSecurity({ ...none, TLS_CERT_FILE: certs.serverCert, TLS_KEY_FILE: certs.serverKey }).tls).toBe(true);
    expect(
      loadServerSecurity({ ...none, TLS_CERT_FILE: certs.serverCert, TLS_KEY_FILE: certs.serverKey, TLS_CA_FILE: certs.caCert, TLS_CLIENT_AUTH: 'require' })
        .mtls,
    ).toBe(true);
    expect(loadClientSecurity({ caFile: certs.caCert, certFile: certs.clientCert, keyFile: certs.clientKey, token: 't' }).tls).toBe(true);
  });

  it('names the variable and the path of a missing, malformed or mismatched file, all at once', () => {
    const garbage = path.join(dir, 'garbage.pem');
    writeFileSync(garbage, 'not a certificate');
    const p = problemsOf(() =>
      loadServerSecurity({
        TLS_CERT_FILE: path.join(dir, 'nope.crt'),
        TLS_KEY_FILE: certs.serverKey,
        TLS_CA_FILE: garbage,
        TLS_CLIENT_AUTH: 'require',
        AUTH_TOKENS_FILE: path.join(dir, 'nope.tokens'),
      }),
    );
    expect(p.find((m) => m.startsWith('TLS_CERT_FILE'))).toContain(path.join(dir, 'nope.crt'));
    expect(p.find((m) => m.startsWith('TLS_CA_FILE'))).toContain(garbage);
    expect(p.find((m) => m.startsWith('AUTH_TOKENS_FILE'))).toContain('no such file');
    // A key that is not the certificate's.
    const mismatch = problemsOf(() => loadServerSecurity({ ...none, TLS_CERT_FILE: certs.serverCert, TLS_KEY_FILE: certs.clientKey }));
    expect(mismatch[0]).toContain(`TLS_KEY_FILE='${certs.clientKey}'`);
    expect(problemsOf(() => loadServerSecurity({ ...none, TLS_CERT_FILE: certs.serverCert }))[0]).toMatch(
      /^TLS_KEY_FILE is required when TLS_CERT_FILE is set/,
    );
    expect(problemsOf(() => loadServerSecurity({ ...none, TLS_CLIENT_AUTH: 'require' }))).toEqual(
      expect.arrayContaining([expect.stringMatching(/^TLS_CA_FILE is required/)]),
    );
    expect(problemsOf(() => loadClientSecurity({ certFile: certs.clientCert, keyFile: certs.clientKey }))[0]).toMatch(
      /^UPSTREAM_TLS_CA_FILE is required when UPSTREAM_TLS_CERT_FILE/,
    );
    expect(problemsOf(() => loadClientSecurity({ caFile: '/nonexistent/ca.crt', names: { ca: '--tls-ca' } }))[0]).toBe(
      "--tls-ca must name a readable file, given '/nonexistent/ca.crt' (no such file)",
    );
    for (const m of [...p, ...mismatch]) expect(Buffer.byteLength(m)).toBeLessThan(1024);
  });

  it('writes a tokens file (mode 0600) that the tokens file parser reads back, the operator as *', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tandem-tokens-'));
    try {
      const file = path.join(dir, 'tokens');
      writeTokensFile(file, [['alice', 'alice-token-0123456789']], 'operator-token-0123456789');
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const t = TokenTable.parse(readFileSync(file, 'utf8'));
      expect(t.size).toBe(2);
      expect(t.identityOf('alice-token-0123456789')).toBe('alice');
      expect(t.identityOf('operator-token-0123456789')).toBe('*');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('parses a tokens file and names the line and rule of a bad one, never the token', () => {
    const t = TokenTable.parse('# comment\n\nalice-token-0123456789 alice\n  operator-token-0123456789   *  \n');
    expect(t.size).toBe(2);
    expect(t.identityOf('alice-token-0123456789')).toBe('alice');
    expect(t.identityOf('operator-token-0123456789')).toBe('*');
    expect(t.identityOf('alice-token-012345678')).toBeUndefined();
    expect(() => TokenTable.parse('short alice')).toThrow(/^line 1: the token must be at least 16 printable ASCII characters, given 5$/);
    expect(() => TokenTable.parse('alice-token-0123456789 alice extra')).toThrow(/^line 1 must be 'TOKEN CLIENT_ID' \(two fields\), given 3/);
    expect(() => TokenTable.parse('alice-token-0123456789 al/ice')).toThrow(/^line 1: the client id must be/);
    expect(() => TokenTable.parse('alice-token-0123456789 a\nalice-token-0123456789 b')).toThrow(/^line 2: the token must be unique/);
    expect(() => TokenTable.parse('# nothing\n')).toThrow(/at least one token line/);
    let msg = '';
    try {
      TokenTable.parse('secret-secret-secret-1 a b');
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).not.toContain('secret');
  });

  it('makes secrets a tokens file accepts and a command line cannot take for an option (never a leading -)', () => {
    const secrets = Array.from({ length: 2000 }, () => newSecret());
    // base64url alone starts with '-' once in 64: 2000 draws without the prefix would hit it almost surely.
    expect(secrets.filter((s) => s.startsWith('-'))).toEqual([]);
    expect(new Set(secrets).size).toBe(secrets.length);
    const table = TokenTable.parse(secrets.map((s, i) => `${s} client-${i}`).join('\n'));
    expect(table.size).toBe(secrets.length);
    expect(table.identityOf(secrets[7])).toBe('client-7');
  });

  it('authenticates metadata: UNAUTHENTICATED naming the header; identity checks give PERMISSION_DENIED naming the field', () => {
    const t = TokenTable.of({ 'alice-token-0123456789': 'alice', 'operator-token-0123456789': '*' });
    const md = (v?: string): grpc.Metadata => {
      const m = new grpc.Metadata();
      if (v !== undefined) m.set('authorization', v);
      return m;
    };
    expect(t.authenticate(md('Bearer alice-token-0123456789'))).toBe('alice');
    for (const [v, part] of [
      [undefined, 'given none'],
      ['Basic abc', 'another form'],
      ['Bearer nope-nope-nope-nope', 'unknown token'],
    ] as const) {
      let err: { code?: number; message?: string } = {};
      try {
        t.authenticate(md(v));
      } catch (e) {
        err = e as typeof err;
      }
      expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(err.message).toContain("metadata 'authorization'");
      expect(err.message).toContain(part);
    }
    expect(() => checkIdentity('alice', 'clientId', 'alice')).not.toThrow();
    expect(() => checkIdentity('*', 'clientId', 'bob')).not.toThrow();
    expect(() => checkIdentity('alice', 'open.client_id', 'bob')).toThrow(
      "open.client_id must be the caller's own client id 'alice' (its token's identity), given 'bob'",
    );
    let long = '';
    try {
      checkIdentity('alice', 'clientId', 'y'.repeat(20_000));
    } catch (e) {
      long = (e as Error).message;
    }
    expect(Buffer.byteLength(long)).toBeLessThan(1024);
  });

  it('a service given a bad certificate file exits 2 naming the variable and the path', () => {
    const bad = path.join(dir, 'missing.crt');
    const r = spawnSync(process.execPath, ['--require', 'tsx/cjs', path.join(ROOT, 'apps/server-executor/src/main.ts')], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
      env: { PATH: process.env.PATH ?? '', MODEL_DIR: path.join(dir, 'no-model'), TLS_CERT_FILE: bad, TLS_KEY_FILE: certs.serverKey, NATS_URL: 'off' },
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`TLS_CERT_FILE must name a readable file, given '${bad}' (no such file)`);
  }, 60_000);
});
