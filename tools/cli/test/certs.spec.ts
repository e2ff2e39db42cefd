import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthClient, HealthReporter, ServingStatus } from '@tandem/protocol';
import { bindServer, loadClientSecurity, loadServerSecurity } from '@tandem/service-kit';
import { run } from './run-cli';

describe('tandem certs', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-certs-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes a CA and server/client certificates that carry a mutual-TLS handshake on 127.0.0.1', async () => {
    const out = path.join(dir, 'certs');
    const r = await run(['certs', '--out', out, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const set = JSON.parse(r.stdout) as Record<string, string>;
    expect(Object.keys(set).sort()).toEqual(['caCert', 'caKey', 'clientCert', 'clientKey', 'dir', 'serverCert', 'serverKey']);

    const server = new grpc.Server();
    new HealthReporter(ServingStatus.SERVING).addTo(server);
    const sec = loadServerSecurity({
      TLS_CERT_FILE: set.serverCert,
      TLS_KEY_FILE: set.serverKey,
      TLS_CA_FILE: set.caCert,
      TLS_CLIENT_AUTH: 'require',
      AUTH_TOKENS_FILE: '',
    });
    const port = await bindServer(server, '127.0.0.1:0', sec.credentials);
    const check = async (files: { caFile: string; certFile?: string; keyFile?: string }): Promise<ServingStatus | grpc.ServiceError> => {
      const c = new HealthClient(`127.0.0.1:${port}`, loadClientSecurity(files).credentials);
      try {
        return await new Promise((resolve) => c.check({ service: '' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, v) => resolve(e ?? v.status)));
      } finally {
        c.close();
      }
    };
    try {
      expect(await check({ caFile: set.caCert, certFile: set.clientCert, keyFile: set.clientKey })).toBe(ServingStatus.SERVING);
      expect(((await check({ caFile: set.caCert })) as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
    } finally {
      server.forceShutdown();
    }
  });

  it('exits 2 naming the flag for bad usage', async () => {
    const missing = await run(['certs']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('--out is required');
    const days = await run(['certs', '--out', path.join(dir, 'x'), '--days', '0']);
    expect(days.code).toBe(2);
    expect(days.stderr).toContain("--days must be an integer in 1..3650, given '0'");
    const host = await run(['certs', '--out', path.join(dir, 'x'), '--host', 'ok,bad host']);
    expect(host.code).toBe(2);
    expect(host.stderr).toContain("--host[1] must be a DNS name or an IP address, given 'bad host'");
  });

  it('plans and generate --agent name the TLS flag and path of a missing file (exit 2)', async () => {
    const r = await run(['plans', '--planner', '127.0.0.1:1', '--tls-ca', '/nonexistent/ca.crt']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--tls-ca must name a readable file, given '/nonexistent/ca.crt' (no such file)");
    const g = await run(['generate', '--agent', '127.0.0.1:1', '--ids', '1', '--max-new-tokens', '1', '--tls-cert', '/x.crt']);
    expect(g.code).toBe(2);
    expect(g.stderr).toContain('--tls-key is required when --tls-cert is set');
  });
});
