import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ClientProfile, PlannerServiceClient, ServerLoad, ServingStatus, Subjects } from '@tandem/protocol';
import type { ClientPlan, ListPlansResponse, WatchPlansResponse } from '@tandem/protocol';
import { clientOptions, loadClientSecurity, loadServerSecurity, makeCertificates, type CertificateSet } from '@tandem/service-kit';
import { clientProfile, eventually, expectRefusal, healthStatus, serverLoad } from '@tandem/testkit';
import { startLivePlanner, type LivePlanner } from './fixtures';

const MODEL = 'm';
const ALICE = 'alice-token-0123456789';
const BOB = 'bob-token-0123456789ab';
const OPERATOR = 'operator-token-0123456789';

const profile = (clientId: string): ClientProfile => clientProfile({ clientId, modelId: MODEL });
const load = (): ServerLoad => serverLoad({ modelId: MODEL });

describe('planner over mTLS with bearer tokens: each client watches only its own plans', () => {
  let dir: string;
  let certs: CertificateSet;
  let live: LivePlanner;
  const clients: grpc.Client[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-planner-tls-'));
    certs = makeCertificates(path.join(dir, 'certs'));
    const tokensFile = path.join(dir, 'tokens');
    writeFileSync(tokensFile, `${ALICE} alice\n${BOB} bob\n${OPERATOR} *\n`);
    const security = loadServerSecurity({
      TLS_CERT_FILE: certs.serverCert,
      TLS_KEY_FILE: certs.serverKey,
      TLS_CA_FILE: certs.caCert,
      TLS_CLIENT_AUTH: 'require',
      AUTH_TOKENS_FILE: tokensFile,
    });
    live = await startLivePlanner({ modelId: MODEL, security });
    live.nc.publish(Subjects.serverLoad('srv'), ServerLoad.encode(load()).finish());
    for (const id of ['alice', 'bob']) live.nc.publish(Subjects.clientProfile(id), ClientProfile.encode(profile(id)).finish());
    await eventually(() => live.server.plans().length === 2, { what: 'plans for alice and bob' });
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await live?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const planner = (token?: string): PlannerServiceClient => {
    const sec = loadClientSecurity({ caFile: certs.caCert, certFile: certs.clientCert, keyFile: certs.clientKey, token });
    const c = new PlannerServiceClient(live.addr, sec.credentials, clientOptions(sec));
    clients.push(c);
    return c;
  };

  /** The first plan on a WatchPlans stream, or the error that ended it. */
  const firstPlan = (c: PlannerServiceClient, clientId: string): Promise<ClientPlan | grpc.ServiceError> =>
    new Promise((resolve) => {
      const call = c.watchPlans({ clientId }, { deadline: Date.now() + 10_000 });
      call.on('data', (m: WatchPlansResponse) => {
        if (!m.plan) return; // a client not planned yet is told why first (no_plan_reason)
        resolve(m.plan);
        call.cancel();
      });
      call.on('error', (e: grpc.ServiceError) => resolve(e));
    });

  const list = (c: PlannerServiceClient): Promise<ListPlansResponse | grpc.ServiceError> =>
    new Promise((resolve) => c.listPlans({ pageSize: 0, pageToken: '' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) => resolve(e ?? r)));

  it('refuses WatchPlans without a token (UNAUTHENTICATED naming the metadata)', async () => {
    expectRefusal((await firstPlan(planner(), 'alice')) as grpc.ServiceError, grpc.status.UNAUTHENTICATED, "metadata 'authorization'", 'Bearer');
  });

  it("refuses another client's WatchPlans (PERMISSION_DENIED naming client_id) and serves the caller's own", async () => {
    const alice = planner(ALICE);
    expectRefusal((await firstPlan(alice, 'bob')) as grpc.ServiceError, grpc.status.PERMISSION_DENIED, 'client_id', "'alice'", "'bob'");
    const own = (await firstPlan(alice, 'alice')) as ClientPlan;
    expect(own.clientId).toBe('alice');
    expect(own.classes[0].placement).toMatch(/^[CS]{3}$/);
    expect(((await firstPlan(planner(BOB), 'bob')) as ClientPlan).clientId).toBe('bob');
  });

  it('lists every plan only for an operator token', async () => {
    expectRefusal((await list(planner(ALICE))) as grpc.ServiceError, grpc.status.PERMISSION_DENIED, 'ListPlans', 'operator token', "'alice'");
    const all = (await list(planner(OPERATOR))) as ListPlansResponse;
    expect(all.plans.map((p) => p.clientId)).toEqual(['alice', 'bob']);
    // An operator may also watch any client.
    expect(((await firstPlan(planner(OPERATOR), 'bob')) as ClientPlan).clientId).toBe('bob');
  });

  it('refuses a client without a certificate at the handshake (mTLS), and leaves health open to one with a certificate and no token', async () => {
    const noCert = loadClientSecurity({ caFile: certs.caCert, token: ALICE });
    const c = new PlannerServiceClient(live.addr, noCert.credentials, clientOptions(noCert));
    clients.push(c);
    expect(((await list(c)) as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
    const withCert = loadClientSecurity({ caFile: certs.caCert, certFile: certs.clientCert, keyFile: certs.clientKey });
    expect(await healthStatus(live.addr, '', withCert.credentials)).toBe(ServingStatus.SERVING);
  });
});
