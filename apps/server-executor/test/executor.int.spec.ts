import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { greedyToken, SplitPipeline } from '@tandem/model';
import { ExecutorServiceClient, fromWireTensor, HealthClient, probeLink, ServerLoad, ServingStatus, Subjects, type GetStatusResponse } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { eventually, EXECUTOR_SETTINGS, makeTempModel, startNatsServer, withTimeout, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { ExecutorServer, OnnxStageEngine, WorkerStageEngine, type StageEngine } from '../src';
import { ids, TestSession } from './session-client';
import { startTestExecutor, type TestExecutor } from './test-executor';

const log = createLogger({ name: 'test', level: 'silent' });

const engines = {
  worker: (dir: string) => WorkerStageEngine.load(dir, { intraOpNumThreads: 1 }),
  inline: (dir: string) => OnnxStageEngine.load(dir, { intraOpNumThreads: 1 }),
};

describe.each(['worker', 'inline'] as const)('server-executor against a real model (%s engine)', (engineKind) => {
  let model: TempModel;
  let exec: TestExecutor;
  let server: ExecutorServer;
  let addr: string;
  let stageCount: number;
  const session = (): TestSession => exec.session();
  const status = (): Promise<GetStatusResponse> => exec.status();

  beforeAll(async () => {
    model = await makeTempModel();
    const engine = await engines[engineKind](model.dir);
    stageCount = engine.stageCount;
    exec = await startTestExecutor(engine, { maxSessions: 4, maxContextTokens: 40, telemetryIntervalMs: 100 });
    ({ server, addr } = exec);
  });

  afterEach(() => exec.cancelSessions());

  afterAll(async () => {
    await exec.stop();
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

  it('samples the same token from the head run on the last position as from the full logits', async () => {
    for (const prompt of [
      [15496, 11, 995],
      [464, 2068, 7586, 21831, 18045, 625, 262],
    ]) {
      const full = session();
      full.open();
      await full.next(1);
      full.step(1, 0, stageCount - 1, ids(...prompt));
      const hidden = await full.next(2);
      if (hidden.kind?.$case !== 'result' || hidden.kind.value.output?.$case !== 'tensor') throw new Error('expected a hidden state');
      const h = fromWireTensor(hidden.kind.value.output.value, 'h');
      expect(h.shape).toEqual([1, prompt.length, 64]);
      full.step(2, stageCount - 1, stageCount, h);
      const logits = await full.next(3);
      if (logits.kind?.$case !== 'result' || logits.kind.value.output?.$case !== 'tensor') throw new Error('expected logits');
      const l = fromWireTensor(logits.kind.value.output.value, 'l');
      expect(l.shape).toEqual([1, prompt.length, 50257]);
      const want = greedyToken(l as { data: Float32Array }, 50257);
      // the head alone, sampled: it runs on the last position of the hidden state
      const headOnly = session();
      headOnly.open();
      await headOnly.next(1);
      headOnly.step(1, stageCount - 1, stageCount, h, true);
      const a = await headOnly.next(2);
      expect(a.kind?.$case === 'result' && a.kind.value.output).toEqual({ $case: 'token', value: want });
      // every stage, sampled
      const all = session();
      all.open();
      await all.next(1);
      all.step(1, 0, stageCount, ids(...prompt), true);
      const b = await all.next(2);
      expect(b.kind?.$case === 'result' && b.kind.value.output).toEqual({ $case: 'token', value: want });
      for (const s of [full, headOnly, all]) s.call.end();
      await Promise.all([full, headOnly, all].map((s) => s.ended));
    }
  });

  it('refuses a malformed tensor with INVALID_ARGUMENT while another session keeps working', async () => {
    const good = session();
    good.open();
    await good.next(1);
    const bad = session();
    bad.open();
    await bad.next(1);
    bad.call.write({
      kind: { $case: 'step', value: { seq: '1', stageBegin: 1, stageEnd: 2, input: { dtype: 1, shape: [1, 2, 64], data: Buffer.alloc(100) }, sample: false } },
    });
    const err = (await bad.ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe('step.input.data must hold 512 bytes for shape [1,2,64] of 4-byte elements, given 100 bytes');
    good.step(1, 0, stageCount, ids(1, 2, 3), true);
    const m = await good.next(2);
    expect(m.kind?.$case).toBe('result');
  });

  it.each([
    ['a step before open', (s: TestSession) => s.step(1, 0, 1, ids(1)), grpc.status.FAILED_PRECONDITION, 'the first message must be open, given step'],
    [
      'a second open',
      (s: TestSession) => {
        s.open();
        s.open();
      },
      grpc.status.FAILED_PRECONDITION,
      'open must be sent once, as the first message; given a second open',
    ],
    ['another model', (s: TestSession) => s.open('0123456789abcdef'), grpc.status.FAILED_PRECONDITION, "open.model_id must be '"],
    [
      'a stage range past the model',
      (s: TestSession) => (s.open(), s.step(1, 1, 99, { dtype: 'float32', shape: [1, 1, 64], data: new Float32Array(64) })),
      grpc.status.INVALID_ARGUMENT,
      'step.stage_end must be in 2..6, given 99',
    ],
    [
      'float input to embed',
      (s: TestSession) => (s.open(), s.step(1, 0, 1, { dtype: 'float32', shape: [1, 1], data: new Float32Array(1) })),
      grpc.status.INVALID_ARGUMENT,
      'step.input.dtype must be DATA_TYPE_INT64',
    ],
    [
      'a hidden state of the wrong width',
      (s: TestSession) => (s.open(), s.step(1, 1, 2, { dtype: 'float32', shape: [1, 1, 63], data: new Float32Array(63) })),
      grpc.status.INVALID_ARGUMENT,
      'step.input.shape must be [1, T>=1, 64], given [1, 1, 63]',
    ],
    [
      'a token id outside the vocabulary',
      (s: TestSession) => (s.open(), s.step(1, 0, 1, ids(50257))),
      grpc.status.INVALID_ARGUMENT,
      'step.input token ids must be in 0..50256, given 50257',
    ],
    [
      'sample without the head',
      (s: TestSession) => (s.open(), s.step(1, 0, 2, ids(1), true)),
      grpc.status.INVALID_ARGUMENT,
      'step.sample must be false unless the range ends with the head',
    ],
    [
      'a context past the limit',
      (s: TestSession) => (s.open(), s.step(1, 0, 1, ids(...new Array(41).fill(1)))),
      grpc.status.FAILED_PRECONDITION,
      'step would make stage 0 hold 41 tokens; the context must stay <= 40 tokens',
    ],
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

  it('fits its own CPU per message and per byte from the traffic it served', async () => {
    const loadReport = server.loadReader(); // reports from now
    for (let k = 0; k < 4; k++) {
      const s = session();
      s.open();
      await s.next(1);
      s.step(1, 0, stageCount, ids(1, 2, 3, 4 + k), true);
      for (let seq = 2; seq <= 8; seq++) s.step(seq, 0, stageCount, ids(5 + seq), true);
      await s.next(9);
      s.call.end();
    }
    const load = loadReport();
    // steps ran one session at a time here: service time is their own compute, give or take a hop
    expect(load.decodeStretch).toBeGreaterThanOrEqual(1);
    expect(load.decodeStretch).toBeLessThan(3);
    expect(load.promptStretch).toBeGreaterThanOrEqual(1);
    expect(load.longPromptStretch).toBe(0); // 3-4 token prompts: no long step
    expect(load.longStepTokens).toBe(64);
    expect(load.overhead).toBeDefined();
    expect(load.overhead!.samples).toBeGreaterThanOrEqual(1);
    for (const k of ['msPerMessageIn', 'msPerMessageOut', 'msPerKibIn', 'msPerKibOut', 'idleMsPerS'] as const) {
      expect(Number.isFinite(load.overhead![k]) && load.overhead![k] >= 0).toBe(true);
    }
  });
});

describe('server-executor lifecycle and telemetry', () => {
  let model: TempModel;
  let nats: NatsServerHandle;
  let nc: NatsConnection;

  beforeAll(async () => {
    model = await makeTempModel();
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
  });

  afterAll(async () => {
    await nc?.close();
    await nats?.stop();
    model?.remove();
  });

  /** Executor `serverId` of 4 sessions on the worker engine, publishing its load to the test's nats-server every `telemetryIntervalMs`. */
  async function natsExecutor(serverId: string, telemetryIntervalMs: number): Promise<{ server: ExecutorServer; engine: StageEngine }> {
    const engine = await engines.worker(model.dir);
    return { engine, server: new ExecutorServer({ engine, log, ...EXECUTOR_SETTINGS, serverId, maxSessions: 4, natsUrl: nats.url, telemetryIntervalMs }) };
  }

  it('publishes its load over NATS and drains on stop: NOT_SERVING, new sessions UNAVAILABLE', async () => {
    const { engine, server } = await natsExecutor('exec-nats', 50);
    try {
      const sub = nc.subscribe(Subjects.serverLoad('exec-nats'), { max: 1 });
      const { port } = await server.start();
      const load = await withTimeout(
        (async () => {
          for await (const m of sub) return ServerLoad.decode(m.data);
        })(),
        5000,
        'a load report',
      );
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
    }
  });

  it('advertises its address in every load report, and reports draining at once on stop, long before the interval or the grace is over', async () => {
    // Reports every 5 s: a draining report within 1 s of stop() can only be the one stop() sends.
    const { server } = await natsExecutor('exec-adv', 5000);
    const reports: { load: ServerLoad; at: number }[] = [];
    const sub = nc.subscribe(Subjects.serverLoad('exec-adv'));
    void (async () => {
      for await (const m of sub) reports.push({ load: ServerLoad.decode(m.data), at: performance.now() });
    })();
    try {
      const { port } = await server.start();
      // EXECUTOR_ADVERTISE_ADDR unset and a concrete listen host (127.0.0.1): the bound port is advertised.
      expect(server.advertisedAddress).toBe(`127.0.0.1:${port}`);
      await eventually(() => reports.length >= 1, { timeoutMs: 5000, what: 'the first load report' });
      expect(reports[0].load.address).toBe(`127.0.0.1:${port}`);
      expect(reports[0].load.draining).toBeFalsy();
      const client = new ExecutorServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      const held = new TestSession(client.session());
      held.open();
      await held.next(1);
      const before = reports.length;
      const t0 = performance.now();
      let stopped = false;
      const stopping = server.stop({ graceMs: 3000 }).then(() => (stopped = true));
      await eventually(() => reports.length > before, { timeoutMs: 2000, what: 'a load report after stop()' });
      const drainingReport = reports[before];
      expect(drainingReport.load.draining).toBe(true);
      expect(drainingReport.load.address).toBe(`127.0.0.1:${port}`);
      expect(drainingReport.at - t0).toBeLessThan(1000);
      process.stderr.write(`executor stop(): the draining load report ${Math.round(drainingReport.at - t0)} ms after (interval 5000 ms, grace 3000 ms)\n`);
      // Still draining (the session holds it within its grace): the report came first.
      expect(stopped).toBe(false);
      expect((await exec(client)).draining).toBe(true);
      held.call.cancel();
      await stopping;
      client.close();
    } finally {
      sub.unsubscribe();
      await server.stop();
    }
  });
});

describe('server-executor link probe (ProbeLink)', () => {
  it('answers as many zero bytes as asked, refuses sizes above 1 MiB naming the field, and answers none while draining', async () => {
    const model = await makeTempModel();
    const exec = await startTestExecutor(await engines.worker(model.dir), { serverId: 'exec-probe' });
    const probe = async (payload: number, replyBytes: number): Promise<Buffer> => (await probeLink(exec.client, payload, replyBytes, 5000)).payload;
    try {
      const reply = await probe(256 * 1024, 0);
      expect(reply.byteLength).toBe(0);
      const down = await probe(0, 300_000);
      expect(down.byteLength).toBe(300_000);
      expect(down.every((b) => b === 0)).toBe(true);
      await expect(probe(1_048_577, 0)).rejects.toMatchObject({
        code: grpc.status.INVALID_ARGUMENT,
        details: 'payload must be at most 1048576 bytes, given 1048577',
      });
      await expect(probe(0, 2_000_000)).rejects.toMatchObject({
        code: grpc.status.INVALID_ARGUMENT,
        details: 'reply_bytes must be at most 1048576 bytes, given 2000000',
      });
      expect((await probe(1_048_576, 1_048_576)).byteLength).toBe(1_048_576);
      expect((await exec.status()).activeSessions).toBe(0); // a probe opens no session
      exec.server.drain();
      await expect(probe(1024, 1024)).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE, details: expect.stringContaining('draining') });
    } finally {
      await exec.stop();
      model.remove();
    }
  });
});

describe('server-executor drained by an operator (SIGUSR2)', () => {
  it('refuses new sessions and reports draining at once, lets open sessions run on, and stays up until stopped', async () => {
    const model = await makeTempModel();
    const exec = await startTestExecutor(await engines.worker(model.dir), { serverId: 'exec-drain' });
    try {
      const report = exec.server.loadReader();
      expect(report().draining).toBeFalsy();
      const held = exec.session();
      held.open();
      await held.next(1);
      exec.server.drain();
      exec.server.drain(); // idempotent
      expect(report().draining).toBe(true);
      expect(await exec.health()).toBe(ServingStatus.NOT_SERVING);
      const late = exec.session();
      late.open();
      const refused = (await late.ended) as grpc.ServiceError;
      expect(refused.code).toBe(grpc.status.UNAVAILABLE);
      expect(refused.details).toContain('draining');
      // The open session still computes, and ends cleanly.
      held.step(1, 0, 1, ids(464, 2068));
      expect((await held.next(2)).kind?.$case).toBe('result');
      held.call.end();
      await eventually(async () => (await exec.status()).activeSessions === 0, { what: 'the session ended' });
      await new Promise((r) => setTimeout(r, 200));
      expect(await exec.status()).toMatchObject({ draining: true, activeSessions: 0 });
    } finally {
      await exec.stop();
      model.remove();
    }
  });
});

/** The executor's GetStatus through `client` (deadline 5 s). */
function exec(client: ExecutorServiceClient): Promise<GetStatusResponse> {
  return new Promise((resolve, reject) => client.getStatus({}, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (e, r) => (e ? reject(e) : resolve(r))));
}
