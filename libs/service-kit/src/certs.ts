// A local certificate authority and certificates for the demo and the tests (`tandem certs`).
// Node 20's crypto parses X.509 (X509Certificate) but cannot create or sign certificates, so
// this drives the `openssl` binary (OpenSSL 1.1.1 or later, for -addext) through child_process.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Paths of what makeCertificates wrote (all PEM). */
export interface CertificateSet {
  readonly dir: string;
  /** The CA's certificate: what servers and clients trust (TLS_CA_FILE, UPSTREAM_TLS_CA_FILE, --tls-ca). */
  readonly caCert: string;
  /** The CA's key: needed only to issue more certificates; keep it off the serving machines. */
  readonly caKey: string;
  /** Server certificate and key, valid for `hosts` (TLS_CERT_FILE, TLS_KEY_FILE). */
  readonly serverCert: string;
  readonly serverKey: string;
  /** Client certificate and key for mTLS (UPSTREAM_TLS_CERT_FILE, UPSTREAM_TLS_KEY_FILE, --tls-cert/--tls-key). */
  readonly clientCert: string;
  readonly clientKey: string;
}

export interface CertificateOptions {
  /** Names and addresses the server certificate is valid for (default 127.0.0.1, ::1, localhost). */
  readonly hosts?: readonly string[];
  /** Validity in days (default 30). */
  readonly days?: number;
  /** Common name of the client certificate (default tandem-client). */
  readonly clientName?: string;
  /** The openssl binary (default `openssl` on PATH). */
  readonly openssl?: string;
}

const IP = /^(\d{1,3}(\.\d{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:]*)$/;

/**
 * Makes a fresh CA (ECDSA P-256) and, signed by it, a server certificate for `hosts` and a
 * client certificate, in `dir` (created; existing files are overwritten). Keys are written 0600.
 * @throws Error naming openssl's step and its message when openssl is missing or fails.
 */
export function makeCertificates(dir: string, opts: CertificateOptions = {}): CertificateSet {
  const hosts = opts.hosts ?? ['127.0.0.1', '::1', 'localhost'];
  const days = String(opts.days ?? 30);
  const bin = opts.openssl ?? 'openssl';
  mkdirSync(dir, { recursive: true });
  const p = (f: string): string => join(dir, f);
  const run = (step: string, args: string[]): void => {
    try {
      execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
      if (e.code === 'ENOENT')
        throw new Error(`the openssl binary must be installed to make certificates ('${bin}' was not found on PATH; apt-get install openssl)`);
      throw new Error(
        `openssl failed to ${step}: ${String(e.stderr ?? e.message)
          .trim()
          .slice(0, 400)}`,
      );
    }
  };
  const key = (file: string): void => {
    run(`make ${file}`, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', p(file)]);
    chmodSync(p(file), 0o600);
  };
  key('ca.key');
  run('make the CA certificate', [
    'req',
    '-x509',
    '-new',
    '-key',
    p('ca.key'),
    '-sha256',
    '-days',
    days,
    '-subj',
    '/CN=Tandem local CA',
    '-out',
    p('ca.crt'),
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const issue = (name: string, cn: string, ext: string): void => {
    key(`${name}.key`);
    run(`make the ${name} request`, ['req', '-new', '-key', p(`${name}.key`), '-subj', `/CN=${cn}`, '-out', p(`${name}.csr`)]);
    writeFileSync(p(`${name}.ext`), ext);
    run(`sign the ${name} certificate`, [
      'x509',
      '-req',
      '-in',
      p(`${name}.csr`),
      '-CA',
      p('ca.crt'),
      '-CAkey',
      p('ca.key'),
      '-CAcreateserial',
      '-days',
      days,
      '-sha256',
      '-extfile',
      p(`${name}.ext`),
      '-out',
      p(`${name}.crt`),
    ]);
  };
  const san = hosts.map((h) => (IP.test(h) ? `IP:${h}` : `DNS:${h}`)).join(',');
  issue(
    'server',
    hosts.find((h) => !IP.test(h)) ?? hosts[0],
    `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`,
  );
  issue('client', opts.clientName ?? 'tandem-client', 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
  const set: CertificateSet = {
    dir,
    caCert: p('ca.crt'),
    caKey: p('ca.key'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
  };
  for (const f of Object.values(set).slice(1)) if (!existsSync(f)) throw new Error(`openssl did not write ${f}`);
  return set;
}
