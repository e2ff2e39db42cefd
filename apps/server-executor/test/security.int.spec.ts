import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { channelOptions, ExecutorServiceClient, HealthClient, ServingStatus, type GetStatusResponse, type SessionRequest } from '@tandem/protocol';
import {
  clientOptions,
  createLogger,
  loadClientSecurity,
  loadServerSecurity,
  makeCertificates,
  type CertificateSet,
  type ClientSecurity,
  type ServerSecurity,
} from '@tandem/service-kit';
import { expectRefusal, makeTempModel, type TempModel } from '@tandem/testkit';
import { ExecutorServer, OnnxStageEngine, type StageEngine } from '../src';
import { OipTestClient } from './oip-client';
import { ids, TestSession } from './session-client';

const log = createLogger({ name: 'test', level: 'silent' });
const ALICE = 'alice-token-0123456789';
const BOB = 'bob-token-0123456789ab';

describe('server-executor over TLS, mTLS and with bearer tokens (real servers on 127.0.0.1)', () => {
  let model: TempModel;
  let engine: StageEngine;
  let dir: string;
  let certs: CertificateSet;
  let tokensFile: string;
  const servers: ExecutorServer[] = [];
  const clients: grpc.Client[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-exec-tls-'));
    certs = makeCertificates(path.join(dir, 'certs'));
    tokensFile = path.join(dir, 'tokens');
    writeFileSync(tokensFile, `# test tokens\n${ALICE} alice\n${BOB} bob\n`);
    model = await makeTempModel();
    engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const s of servers) await s.stop({ graceMs: 100 });
    model?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  async function start(security: ServerSecurity): Promise<string> {
    const server = new ExecutorServer({
      engine,
      log,
      address: '127.0.0.1:0',
      serverId: 'exec-tls',
      maxSessions: 8,
      maxContextTokens: 64,
      maxMessageBytes: 8 << 20,
      batching: false,
      maxBatch: 1,
      idleTimeoutMs: 30_000,
      telemetryIntervalMs: 1000,
      security,
    });
    servers.push(server);
    return `127.0.0.1:${(await server.start()).port}`;
  }

  function client(addr: string, sec?: ClientSecurity): ExecutorServiceClient {
    const c = new ExecutorServiceClient(
      addr,
      sec?.credentials ?? grpc.credentials.createInsecure(),
      clientOptions(sec, { ...channelOptions(8 << 20), 'grpc.initial_reconnect_backoff_ms': 100 }),
    );
    clients.push(c);
    return c;
  }

  const status = (c: ExecutorServiceClient): Promise<GetStatusResponse> =>
    new Promise((resolve, reject) => c.getStatus({}, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) => (e ? reject(e) : resolve(r))));

  /** Opens a session as `clientId` and runs one whole-model sampled step; resolves with the token or the error. */
  async function oneStep(c: ExecutorServiceClient, clientId: string): Promise<number | grpc.ServiceError> {
    const s = new TestSession(c.session({ deadline: Date.now() + 15_000 }));
    s.call.write({ kind: { $case: 'open', value: { clientId, planEpoch: '0', modelId: '' } } } satisfies SessionRequest);
    s.step(1, 0, engine.stageCount, ids(1, 2, 3), true);
    try {
      const r = await s.next(2);
      s.call.end();
      await s.ended;
      return r.kind?.$case === 'result' && r.kind.value.output?.$case === 'token' ? r.kind.value.output.value : -1;
    } catch {
      return (await s.ended) as grpc.ServiceError;
    }
  }

  it('serves a TLS client that trusts its CA, and refuses a plaintext client', async () => {
    const addr = await start(
      loadServerSecurity({ TLS_CERT_FILE: certs.serverCert, TLS_KEY_FILE: certs.serverKey, TLS_CA_FILE: '', TLS_CLIENT_AUTH: 'none', AUTH_TOKENS_FILE: '' }),
    );
    const tls = client(addr, loadClientSecurity({ caFile: certs.caCert }));
    expect((await status(tls)).maxSessions).toBe(8);
    expect(typeof (await oneStep(tls, 'anyone'))).toBe('number');
    const plain = client(addr);
    await expect(status(plain)).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  });

  it('refuses a TLS client that does not trust the server certificate', async () => {
    const other = makeCertificates(path.join(dir, 'other'));
    const addr = await start(
      loadServerSecurity({ TLS_CERT_FILE: certs.serverCert, TLS_KEY_FILE: certs.serverKey, TLS_CA_FILE: '', TLS_CLIENT_AUTH: 'none', AUTH_TOKENS_FILE: '' }),
    );
    await expect(status(client(addr, loadClientSecurity({ caFile: other.caCert })))).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  });

  it('mTLS: serves a client with a certificate from its CA, refuses one without a certificate', async () => {
    const addr = await start(
      loadServerSecurity({
        TLS_CERT_FILE: certs.serverCert,
        TLS_KEY_FILE: certs.serverKey,
        TLS_CA_FILE: certs.caCert,
        TLS_CLIENT_AUTH: 'require',
        AUTH_TOKENS_FILE: '',
      }),
    );
    const withCert = client(addr, loadClientSecurity({ caFile: certs.caCert, certFile: certs.clientCert, keyFile: certs.clientKey }));
    expect((await status(withCert)).maxSessions).toBe(8);
    const noCert = client(addr, loadClientSecurity({ caFile: certs.caCert }));
    await expect(status(noCert)).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  });

  describe('with AUTH_TOKENS_FILE', () => {
    let addr: string;
    beforeAll(async () => {
      addr = await start(
        loadServerSecurity({
          TLS_CERT_FILE: certs.serverCert,
          TLS_KEY_FILE: certs.serverKey,
          TLS_CA_FILE: '',
          TLS_CLIENT_AUTH: 'none',
          AUTH_TOKENS_FILE: tokensFile,
        }),
      );
    });
    const as = (token?: string): ExecutorServiceClient => client(addr, loadClientSecurity({ caFile: certs.caCert, token }));

    it('refuses a call without a token or with an unknown one (UNAUTHENTICATED, naming the metadata)', async () => {
      const none = await status(as()).catch((e: grpc.ServiceError) => e);
      expectRefusal(none as grpc.ServiceError, grpc.status.UNAUTHENTICATED, "metadata 'authorization'", 'Bearer', 'given none');
      const unknown = await status(as('not-a-known-token-at-all')).catch((e: grpc.ServiceError) => e);
      expectRefusal(unknown as grpc.ServiceError, grpc.status.UNAUTHENTICATED, "metadata 'authorization'", 'unknown token');
      expect((unknown as grpc.ServiceError).details).not.toContain('not-a-known-token-at-all');
      const session = await oneStep(as(), 'alice');
      expectRefusal(session as grpc.ServiceError, grpc.status.UNAUTHENTICATED, "metadata 'authorization'");
    });

    it("opens a session under the caller's own id and refuses another identity (PERMISSION_DENIED naming open.client_id)", async () => {
      const alice = as(ALICE);
      const own = await oneStep(alice, 'alice');
      expect(typeof own).toBe('number');
      const other = await oneStep(alice, 'bob');
      expectRefusal(other as grpc.ServiceError, grpc.status.PERMISSION_DENIED, 'open.client_id', "'alice'", "'bob'");
      const long = await oneStep(alice, 'x'.repeat(20_000));
      expectRefusal(long as grpc.ServiceError, grpc.status.PERMISSION_DENIED, 'open.client_id');
      // Bob's token, Bob's id: served, the same token as Alice got.
      expect(await oneStep(as(BOB), 'bob')).toBe(own);
      expect((await status(alice)).activeSessions).toBe(0);
    });

    it('guards the Open Inference Protocol with the same TLS and tokens, a call running under its token’s identity', async () => {
      const oip = (token?: string): OipTestClient => {
        const sec = loadClientSecurity({ caFile: certs.caCert, token });
        const c = new OipTestClient(addr, sec.credentials, clientOptions(sec, channelOptions(8 << 20)));
        clients.push(c.client);
        return c;
      };
      const request = { modelName: engine.modelId, inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 3], contents: { int64Contents: [1, 2, 3] } }] };
      const anonymous = oip();
      expectRefusal(await anonymous.refusal(anonymous.live()), grpc.status.UNAUTHENTICATED, "metadata 'authorization'", 'given none');
      expectRefusal(await anonymous.refusal(anonymous.infer(request)), grpc.status.UNAUTHENTICATED, '/inference.GRPCInferenceService/ModelInfer');
      const alice = oip(ALICE);
      expect(await alice.live()).toBe(true);
      const r = await alice.infer(request);
      // The same next token as a session of Alice's gets.
      expect(r.outputs[0].contents?.int64Contents).toEqual([await oneStep(as(ALICE), 'alice')]);
      const plain = new OipTestClient(addr);
      clients.push(plain.client);
      expect((await plain.refusal(plain.live())).code).toBe(grpc.status.UNAVAILABLE);
    });

    it('leaves health checks open', async () => {
      const hc = new HealthClient(addr, loadClientSecurity({ caFile: certs.caCert }).credentials);
      clients.push(hc);
      const r = await new Promise<ServingStatus>((resolve, reject) => hc.check({ service: '' }, (e, v) => (e ? reject(e) : resolve(v.status))));
      expect(r).toBe(ServingStatus.SERVING);
    });
  });
});
