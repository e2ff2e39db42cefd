import * as grpc from '@grpc/grpc-js';
import {
  channelOptions,
  ExecutorServiceClient,
  ExecutorServiceService,
  fromWireTensor,
  HealthClient,
  HealthReporter,
  ServingStatus,
  toWireTensor,
  type ExecutorServiceServer,
  type HostTensor,
  type SessionRequest,
  type SessionResponse,
} from '../src';

const MAX_BYTES = 64 * 1024 * 1024;

/** An executor that echoes every step's input tensor back: exercises the wire, not the model. */
function echoServer(): Pick<ExecutorServiceServer, 'session' | 'getStatus'> {
  return {
    session(call) {
      call.on('data', (req: SessionRequest) => {
        if (req.kind?.$case === 'open') {
          call.write({ kind: { $case: 'opened', value: { sessionId: 's1', modelId: 'echo', stageCount: 6, maxContextTokens: 1024 } } });
        } else if (req.kind?.$case === 'step') {
          const step = req.kind.value;
          call.write({
            kind: { $case: 'result', value: { seq: step.seq, output: { $case: 'tensor', value: step.input! }, computeMs: 0, queueMs: 0, serviceMs: 0 } },
          });
        }
      });
      call.on('end', () => call.end());
    },
    getStatus(_call, cb) {
      cb(null, { activeSessions: 3, queueDepth: 1, sessionsOpened: 7, stepsCompleted: 11, maxSessions: 64, modelId: 'echo', draining: false, batchedSteps: 0 });
    },
  };
}

type Session = grpc.ClientDuplexStream<SessionRequest, SessionResponse>;

/** A session of `clientId` opened on `client` with a deadline `ms` from now: its responses gather in `got`, `ended` settles as the call ends. */
function openSession(client: ExecutorServiceClient, clientId: string, ms: number): { call: Session; got: SessionResponse[]; ended: Promise<void> } {
  const call = client.session({ deadline: Date.now() + ms });
  const got: SessionResponse[] = [];
  const ended = new Promise<void>((resolve, reject) => {
    call.on('data', (m: SessionResponse) => got.push(m));
    call.on('error', reject);
    call.on('end', resolve);
  });
  call.write({ kind: { $case: 'open', value: { clientId, planEpoch: '0', modelId: '' } } });
  return { call, got, ended };
}

/** Sends step `seq` of stage `stageBegin` alone, its input `t`, no sampling. */
function step(call: Session, seq: string, t: HostTensor, stageBegin = 1): boolean {
  return call.write({ kind: { $case: 'step', value: { seq, stageBegin, stageEnd: stageBegin + 1, input: toWireTensor(t), sample: false } } });
}

describe('wire contract over a real gRPC server', () => {
  let server: grpc.Server;
  let client: ExecutorServiceClient;
  let port: number;
  const health = new HealthReporter(ServingStatus.SERVING);

  beforeAll(async () => {
    server = new grpc.Server(channelOptions(MAX_BYTES));
    server.addService(ExecutorServiceService, echoServer());
    health.addTo(server);
    port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    client = new ExecutorServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), channelOptions(MAX_BYTES));
  });

  afterAll(async () => {
    client.close();
    health.closeWatchers();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  });

  it('returns float32 tensors through a bidi stream byte for byte, in order', async () => {
    const sizes = [0, 1, 7, 768, 128 * 768, 2_000_000]; // the last one is 8 MB, past grpc-js's 4 MiB default
    const sent = sizes.map((n, i) => {
      const data = new Float32Array(n);
      for (let j = 0; j < n; j++) data[j] = Math.sin(i * 1000 + j) * 1e3 + (j % 3 === 0 ? Number.MIN_VALUE : 0);
      if (n > 2) {
        data[0] = NaN;
        data[1] = -0;
        data[2] = Infinity;
      }
      return { dtype: 'float32' as const, shape: [1, n], data };
    });
    const { call, got, ended } = openSession(client, 'c1', 20_000);
    sent.forEach((t, i) => step(call, String(i + 1), t));
    call.end();
    await ended;
    expect(got[0].kind?.$case).toBe('opened');
    const results = got.slice(1);
    expect(results).toHaveLength(sizes.length);
    results.forEach((m, i) => {
      if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'tensor') throw new Error(`message ${i} is not a tensor result`);
      expect(m.kind.value.seq).toBe(String(i + 1));
      const back = fromWireTensor(m.kind.value.output.value, 'result');
      expect(back.shape).toEqual([1, sizes[i]]);
      if (sizes[i] >= 128 * 768) {
        // Large tensors arrive aligned in grpc-js's receive buffer and are used in place.
        expect({ i, inPlace: back.data.buffer === m.kind.value.output.value.data.buffer }).toEqual({ i, inPlace: true });
      }
      // Every result is compared after all arrived: a decoded tensor sharing memory that a later
      // message reuses would show here.
      expect(Buffer.from(back.data.buffer, back.data.byteOffset, back.data.byteLength).equals(Buffer.from(sent[i].data.buffer))).toBe(true);
    });
  });

  it('keeps every response intact when many streams answer at once (responses share one serializer buffer)', async () => {
    const streams = 6;
    const perStream = 4;
    const payload = (s: number, k: number): Float32Array => Float32Array.from({ length: 70_000 + 1000 * s }, (_, j) => s * 1e6 + k * 1e4 + (j % 9973));
    const runs = Array.from(
      { length: streams },
      (_, s) =>
        new Promise<void>((resolve, reject) => {
          const call = client.session({ deadline: Date.now() + 20_000 });
          let k = 0;
          call.on('data', (m: SessionResponse) => {
            if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'tensor') return;
            const back = fromWireTensor(m.kind.value.output.value, 'r');
            const want = payload(s, Number(m.kind.value.seq));
            if (!Buffer.from(back.data.buffer, back.data.byteOffset, back.data.byteLength).equals(Buffer.from(want.buffer)))
              reject(new Error(`stream ${s} message ${m.kind.value.seq} corrupted`));
            if (++k === perStream) call.end();
          });
          call.on('error', reject);
          call.on('end', resolve);
          call.write({ kind: { $case: 'open', value: { clientId: `c${s}`, planEpoch: '0', modelId: '' } } });
          for (let q = 0; q < perStream; q++) step(call, String(q), { dtype: 'float32', shape: [1, payload(s, q).length], data: payload(s, q) });
        }),
    );
    await Promise.all(runs);
  });

  it('carries int64 token ids exactly, including values past 2^53', async () => {
    const ids = new BigInt64Array([0n, 50256n, -1n, 9007199254740993n]);
    const call = client.session();
    const reply = new Promise<SessionResponse>((resolve, reject) => {
      call.on('data', (m: SessionResponse) => {
        if (m.kind?.$case === 'result') resolve(m);
      });
      call.on('error', reject);
    });
    call.write({ kind: { $case: 'open', value: { clientId: 'c2', planEpoch: '0', modelId: '' } } });
    step(call, '1', { dtype: 'int64', shape: [1, 4], data: ids }, 0);
    const m = await reply;
    call.end();
    if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'tensor') throw new Error('not a tensor');
    const back = fromWireTensor(m.kind.value.output.value, 'r');
    expect(back.dtype).toBe('int64');
    expect([...(back.data as BigInt64Array)]).toEqual([...ids]);
  });

  it("keeps a quiet call of a client that pings every 50 ms, far more often than the server's own keepalive (grpc-js servers enforce no ping policy)", async () => {
    // A C-core or Go server would answer such pings with GOAWAY too_many_pings and drop the call.
    const eager = new ExecutorServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), channelOptions(MAX_BYTES, { timeMs: 50, timeoutMs: 1000 }));
    try {
      const { call, got, ended } = openSession(eager, 'c3', 10_000);
      const one: HostTensor = { dtype: 'float32', shape: [1, 1], data: Float32Array.of(1) };
      step(call, '1', one);
      await new Promise((r) => setTimeout(r, 1200)); // about 20 pings, no data
      step(call, '2', one);
      call.end();
      await ended;
      expect(got.map((m) => m.kind?.$case)).toEqual(['opened', 'result', 'result']);
    } finally {
      eager.close();
    }
  });

  it('answers unary status and the standard health check', async () => {
    const status = await new Promise((resolve, reject) => client.getStatus({}, (e, r) => (e ? reject(e) : resolve(r))));
    expect(status).toMatchObject({ activeSessions: 3, sessionsOpened: 7, modelId: 'echo' });
    const hc = new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    try {
      const r = await new Promise<{ status: ServingStatus }>((resolve, reject) => hc.check({ service: '' }, (e, x) => (e ? reject(e) : resolve(x))));
      expect(r.status).toBe(ServingStatus.SERVING);
      const missing = await new Promise<grpc.ServiceError>((resolve) => hc.check({ service: 'nope' }, (e) => resolve(e!)));
      expect(missing.code).toBe(grpc.status.NOT_FOUND);
    } finally {
      hc.close();
    }
  });
});

describe('HealthReporter over a real gRPC server', () => {
  it('streams every status change to a watcher and ends the stream itself, so shutdown is graceful', async () => {
    const reporter = new HealthReporter(ServingStatus.SERVING);
    const server = new grpc.Server();
    reporter.addTo(server);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    const hc = new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    try {
      const stream = hc.watch({ service: 'tandem.executor.v1.ExecutorService' });
      const seen: ServingStatus[] = [];
      const ended = new Promise<string>((resolve) => {
        stream.on('error', (e: grpc.ServiceError) => resolve(`error ${grpc.status[e.code]}`));
        stream.on('end', () => resolve('end'));
      });
      const next = (): Promise<void> =>
        new Promise((resolve) =>
          stream.once('data', (m: { status: ServingStatus }) => {
            seen.push(m.status);
            resolve();
          }),
        );
      await next();
      reporter.set('tandem.executor.v1.ExecutorService', ServingStatus.SERVING);
      await next();
      reporter.set('tandem.executor.v1.ExecutorService', ServingStatus.NOT_SERVING);
      await next();
      expect(seen).toEqual([ServingStatus.SERVICE_UNKNOWN, ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
      // A watch stream left open would hold tryShutdown until it is forced (and the watcher would see CANCELLED).
      reporter.closeWatchers();
      expect(await ended).toBe('end');
      const forced = setTimeout(() => server.forceShutdown(), 5000);
      const t0 = performance.now();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      clearTimeout(forced);
      expect(performance.now() - t0).toBeLessThan(1000);
    } finally {
      hc.close();
      server.forceShutdown();
    }
  });
});

describe('fromWireTensor validation', () => {
  it.each([
    [{ dtype: 0, shape: [1], data: Buffer.alloc(4) }, 'x.dtype must be DATA_TYPE_FLOAT32 or DATA_TYPE_INT64, given 0'],
    [{ dtype: 1, shape: [1, -2], data: Buffer.alloc(4) }, 'x.shape[1] must be an integer >= 0, given -2'],
    [{ dtype: 1, shape: [2, 3], data: Buffer.alloc(20) }, 'x.data must hold 24 bytes for shape [2,3] of 4-byte elements, given 20 bytes'],
    [{ dtype: 2, shape: [1, 2], data: Buffer.alloc(8) }, 'x.data must hold 16 bytes for shape [1,2] of 8-byte elements, given 8 bytes'],
  ])('refuses %o', (t, message) => {
    expect(() => fromWireTensor(t, 'x')).toThrow(message);
  });

  it('copies unaligned wire bytes into aligned memory', () => {
    const raw = Buffer.alloc(13);
    const view = raw.subarray(1); // offset 1: not 4-aligned
    new DataView(view.buffer, view.byteOffset).setFloat32(0, 1.5, true);
    const t = fromWireTensor({ dtype: 1, shape: [3], data: view }, 'x');
    expect(t.data[0]).toBe(1.5);
  });
});
