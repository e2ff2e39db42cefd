import * as grpc from '@grpc/grpc-js';
import { connect } from '@nats-io/transport-node';
import { SplitPipeline } from '@tandem/model';
import {
  channelOptions,
  ExecutorServiceClient,
  HealthClient,
  ServerLoad,
  ServingStatus,
  Subjects,
  toWireTensor,
  type GetStatusResponse,
  type HostTensor,
  type SessionRequest,
  type SessionResponse,
} from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { eventually, makeTempModel, startNatsServer, withTimeout, type TempModel } from '@tandem/testkit';
import { ExecutorServer, OnnxStageEngine, WorkerStageEngine } from '../src';

const log = createLogger({ name: 'test', level: 'silent' });
const ids = (...v: number[]): HostTensor => ({ dtype: 'int64', shape: [1, v.length], data: BigInt64Array.from(v, BigInt) });

/** A session stream driven step by step, collecting answers and the final status. */
class TestSession {
  readonly answers: SessionResponse[] = [];
  readonly ended: Promise<grpc.StatusObject | grpc.ServiceError>;
  private waiters: (() => void)[] = [];
  private done = false;
  constructor(readonly call: grpc.ClientDuplexStream<SessionRequest, SessionResponse>) {
    call.on('data', (m: SessionResponse) => { this.answers.push(m); this.waiters.splice(0).forEach((w) => w()); });
    this.ended = new Promise((resolve) => {
      call.on('error', (e: grpc.ServiceError) => { this.done = true; resolve(e); this.waiters.splice(0).forEach((w) => w()); });
      call.on('status', (s: grpc.StatusObject) => { if (s.code === grpc.status.OK) resolve(s); });
    });
  }
  async next(n: number): Promise<SessionResponse> {
    const arrived = async (): Promise<void> => {
      while (this.answers.length < n && !this.done) await new Promise<void>((resolve) => this.waiters.push(resolve));
    };
    await withTimeout(arrived(), 10_000, `answer ${n}`);
    if (this.answers.length < n) throw new Error('stream ended early');
    return this.answers[n - 1];
  }
  open(modelId = ''): void { this.call.write({ kind: { $case: 'open', value: { clientId: 't', planEpoch: 0, modelId } } }); }
  step(seq: number, begin: number, end: number, input: HostTensor, sample = false): void {
    this.call.write({ kind: { $case: 'step', value: { seq, stageBegin: begin, stageEnd: end, input: toWireTensor(input), sample } } });
  }
}

const engines = {
  worker: (dir: string) => WorkerStageEngine.load(dir, { intraOpNumThreads: 1 }),
  inline: (dir: string) => OnnxStageEngine.load(dir, { intraOpNumThreads: 1 }),
};

describe.each(['worker', 'inline'] as const)('server-executor against a real model (%s engine)', (engineKind) => {
  let model: TempModel;
  let server: ExecutorServer;
  let client: ExecutorServiceClient;
  let addr: string;
  let stageCount: number;
  const opened: TestSession[] = [];

  const session = (): TestSession => {
    const s = new TestSession(client.session({ deadline: Date.now() + 30_000 }));
    opened.push(s);
    return s;
  };
  const status = (): Promise<GetStatusResponse> => new Promise((resolve, reject) => client.getStatus({}, (e, r) => (e ? reject(e) : resolve(r))));

  beforeAll(async () => {
    model = await makeTempModel();
    const engine = await engines[engineKind](model.dir);
    stageCount = engine.stageCount;
    server = new ExecutorServer({ engine, log, address: '127.0.0.1:0', serverId: 'exec-test', maxSessions: 4, maxContextTokens: 40, maxMessageBytes: 8 << 20,
      batching: true, maxBatch: 8, idleTimeoutMs: 30_000, telemetryIntervalMs: 100 });
    const { port } = await server.start();
    addr = `127.0.0.1:${port}`;
    client = new ExecutorServiceClient(addr, grpc.credentials.createInsecure(), channelOptions(8 << 20));
  });

  afterEach(() => { for (const s of opened.splice(0)) s.call.cancel(); });

  afterAll(async () => {
    client.close();
    await server.stop({ graceMs: 100 });
    model.remove();
  });

  it('reports SERVING once warmed up', async () => {
    const hc = new HealthClient(addr, grpc.credentials.createInsecure());
    const r = await new Promise<{ status: ServingStatus }>((resolve, reject) => hc.check({ service: '' }, (e, x) => (e ? reject(e) : resolve(x))));
    hc.close();
    expect(r.status).toBe(ServingStatus.SERVING);
  });

  it('generates the same tokens over a session as the one-process pipeline', async () => {
    const prompt = [15496, 11, 995];
    const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(stageCount));
    const expected = await pipe.generate(prompt, { maxNewTokens: 5 });
    await pipe.close();
    const s = session();
    s.open();
    expect((await s.next(1)).kind?.$case).toBe('opened');
    const got: number[] = [];
    let input = ids(...prompt);
    for (let i = 0; i < 5; i++) {
      s.step(i + 1, 0, stageCount, input, true);
      const m = await s.next(i + 2);
      if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'token') throw new Error('expected a token');
      got.push(m.kind.value.output.value);
      input = ids(m.kind.value.output.value);
    }
    expect(got).toEqual(expected);
  });

  it('refuses a malformed tensor with INVALID_ARGUMENT while another session keeps working', async () => {
    const good = session();
    good.open();
    await good.next(1);
    const bad = session();
    bad.open();
    await bad.next(1);
    bad.call.write({ kind: { $case: 'step', value: { seq: 1, stageBegin: 1, stageEnd: 2, input: { dtype: 1, shape: [1, 2, 64], data: Buffer.alloc(100) }, sample: false } } });
    const err = (await bad.ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe('step.input.data must hold 512 bytes for shape [1,2,64] of 4-byte elements, given 100 bytes');
    good.step(1, 0, stageCount, ids(1, 2, 3), true);
    const m = await good.next(2);
    expect(m.kind?.$case).toBe('result');
  });

  it.each([
    ['a step before open', (s: TestSession) => s.step(1, 0, 1, ids(1)), grpc.status.FAILED_PRECONDITION, 'the first message must be open, given step'],
    ['a second open', (s: TestSession) => { s.open(); s.open(); }, grpc.status.FAILED_PRECONDITION, 'open must be sent once, as the first message; given a second open'],
    ['another model', (s: TestSession) => s.open('0123456789abcdef'), grpc.status.FAILED_PRECONDITION, "open.modelId must be '"],
    ['a stage range past the model', (s: TestSession) => { s.open(); s.step(1, 1, 99, { dtype: 'float32', shape: [1, 1, 64], data: new Float32Array(64) }); }, grpc.status.INVALID_ARGUMENT, 'step.stageEnd must be in 2..6, given 99'],
    ['float input to embed', (s: TestSession) => { s.open(); s.step(1, 0, 1, { dtype: 'float32', shape: [1, 1], data: new Float32Array(1) }); }, grpc.status.INVALID_ARGUMENT, 'step.input.dtype must be DATA_TYPE_INT64'],
    ['a hidden state of the wrong width', (s: TestSession) => { s.open(); s.step(1, 1, 2, { dtype: 'float32', shape: [1, 1, 63], data: new Float32Array(63) }); }, grpc.status.INVALID_ARGUMENT, 'step.input.shape must be [1, T>=1, 64], given [1, 1, 63]'],
    ['a token id outside the vocabulary', (s: TestSession) => { s.open(); s.step(1, 0, 1, ids(50257)); }, grpc.status.INVALID_ARGUMENT, 'step.input token ids must be in 0..50256, given 50257'],
    ['sample without the head', (s: TestSession) => { s.open(); s.step(1, 0, 2, ids(1), true); }, grpc.status.INVALID_ARGUMENT, 'step.sample must be false unless the range ends with the head'],
    ['a context past the limit', (s: TestSession) => { s.open(); s.step(1, 0, 1, ids(...new Array(41).fill(1))); }, grpc.status.FAILED_PRECONDITION, 'step would make stage 0 hold 41 tokens; the context must stay <= 40 tokens'],
  ])('refuses %s and names the rule', async (_what, act, code, details) => {
    const s = session();
    act(s);
    const err = (await s.ended) as grpc.ServiceError;
    expect(err.code).toBe(code);
    expect(err.details).toContain(details);
  });

  it('refuses a non-increasing seq', async () => {
    const s = session();
    s.open();
    s.step(5, 0, 1, ids(1));
    await s.next(2);
    s.step(5, 1, 2, { dtype: 'float32', shape: [1, 1, 64], data: new Float32Array(64) });
    const err = (await s.ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe('step.seq must increase within a session (last 5), given 5');
  });

  it('refuses sessions past the limit with RESOURCE_EXHAUSTED, and frees them when they end', async () => {
    const held = [session(), session(), session(), session()];
    for (const s of held) s.open();
    await Promise.all(held.map((s) => s.next(1)));
    expect((await status()).activeSessions).toBe(4);
    const extra = session();
    extra.open();
    const err = (await extra.ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain('open sessions must stay <= 4');
    for (const s of held) s.call.end();
    await eventually(async () => (await status()).activeSessions === 0, { timeoutMs: 2000, what: 'sessions freed' });
  });

  it('frees a session within 1 s of the client cancelling mid-step', async () => {
    const s = session();
    s.open();
    await s.next(1);
    s.step(1, 0, stageCount, ids(...new Array(30).fill(7)), true);
    expect((await status()).activeSessions).toBe(1);
    s.call.cancel();
    const t0 = Date.now();
    await eventually(async () => (await status()).activeSessions === 0, { timeoutMs: 1000, what: 'session freed after cancel' });
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('batches sessions waiting at the same stage and still answers each exactly', async () => {
    const prompt = [464, 2068, 7586];
    const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(stageCount));
    const expected = (await pipe.generate(prompt, { maxNewTokens: 1 }))[0];
    await pipe.close();
    const before = (await status()).batchedSteps;
    const ss = [session(), session(), session(), session()];
    for (const s of ss) s.open();
    await Promise.all(ss.map((s) => s.next(1)));
    for (const s of ss) s.step(1, 0, stageCount, ids(...prompt), true);
    const answers = await Promise.all(ss.map((s) => s.next(2)));
    for (const m of answers) {
      if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'token') throw new Error('expected a token');
      expect(m.kind.value.output.value).toBe(expected);
    }
    expect((await status()).batchedSteps).toBeGreaterThan(before);
  });
});

describe('server-executor lifecycle and telemetry', () => {
  it('publishes its load over NATS and drains on stop: NOT_SERVING, new sessions UNAVAILABLE', async () => {
    const model = await makeTempModel();
    const nats = await startNatsServer();
    const nc = await connect({ servers: nats.url });
    const engine = await engines.worker(model.dir);
    const server = new ExecutorServer({ engine, log, address: '127.0.0.1:0', serverId: 'exec-nats', maxSessions: 4, maxContextTokens: 0, maxMessageBytes: 8 << 20,
      batching: true, maxBatch: 8, idleTimeoutMs: 30_000, natsUrl: nats.url, telemetryIntervalMs: 50 });
    try {
      const sub = nc.subscribe(Subjects.serverLoad('exec-nats'), { max: 1 });
      const { port } = await server.start();
      const load = await withTimeout((async () => { for await (const m of sub) return ServerLoad.decode(m.data); })(), 5000, 'a load report');
      expect(load?.serverId).toBe('exec-nats');
      expect(load?.stages).toHaveLength(engine.stageCount);
      // measured at start-up, so the planner can price the server before any traffic
      expect(load?.stages.every((s) => s.decodeMs > 0 && s.prefillMsPerToken > 0 && s.samples > 0)).toBe(true);
      const client = new ExecutorServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const held = new TestSession(client.session());
      held.open();
      await held.next(1);
      const stopping = server.stop({ graceMs: 300 });
      const hc = new HealthClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const h = await new Promise<{ status: ServingStatus }>((resolve, reject) => hc.check({ service: '' }, (e, x) => (e ? reject(e) : resolve(x))));
      expect(h.status).toBe(ServingStatus.NOT_SERVING);
      const late = new TestSession(client.session());
      late.open();
      expect(((await late.ended) as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
      // the open session is ended with UNAVAILABLE after the grace period
      expect(((await held.ended) as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
      await stopping;
      hc.close();
      client.close();
    } finally {
      await server.stop();
      await nc.close();
      await nats.stop();
      model.remove();
    }
  });
});
