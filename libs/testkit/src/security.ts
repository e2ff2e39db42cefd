import { writeFileSync } from 'node:fs';
import type { CertificateSet, ServerSecurityConfig, UpstreamSecurityConfig } from '@tandem/service-kit';

// What the demo and the end-to-end tests give a service to run as deployed (docs/security.md):
// the certificates of `tandem certs` (makeCertificates) and a tokens file, as the variables
// a service reads them from.

/** Writes `file` (mode 0600): one 'TOKEN ID' line per entry of `tokens` (id → token), then `operatorToken` as the operator ('*'). */
export function writeTokensFile(file: string, tokens: Iterable<readonly [id: string, token: string]>, operatorToken: string): void {
  const lines = [...[...tokens].map(([id, t]) => `${t} ${id}`), `${operatorToken} *`];
  writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
}

/** A service's own port on `certs`: TLS with the server certificate, client certificates of the CA required when `mtls`, and the tokens of `tokensFile`. */
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
