import * as grpc from '@grpc/grpc-js';
import { SplitPipeline } from '@tandem/model';
import { toWireTensor } from '@tandem/protocol';
import { eventually, makeTempModel, type TempModel } from '@tandem/testkit';
import { OnnxStageEngine } from '../src';
import { ids, type TestSession } from './session-client';
import { startTestExecutor, type TestExecutor, type TestExecutorOptions } from './test-executor';

const PROMPTS = [[15496, 11, 995], [464, 2068, 7586, 21831, 18045], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [50256]];
const NEW_TOKENS = 8;

/** One executor on a real tiny model (the inline engine), on 127.0.0.1:0, with a client. */
async function startExecutor(dir: string, opts: TestExecutorOptions): Promise<TestExecutor> {
  return startTestExecutor(await OnnxStageEngine.load(dir, { intraOpNumThreads: 1 }), { serverId: 'gen-test', ...opts });
}

describe('server-side generation (generate) on a real executor', () => {
  let model: TempModel;
  let stageCount: number;
  /** Batching on, the model's full context. */
  let a: TestExecutor;
  /** Batching off. */
  let b: TestExecutor;
  /**
   * Batching off and a short idle timeout, for the idle test alone: on b it ended the sessions of
   * a busy test whose client, on a loaded machine, took longer than 150 ms to send its next step.
   */
  let c: TestExecutor;
  const expected = new Map<number[], number[]>();
  const session = (e: TestExecutor, deadlineMs?: number): TestSession => e.session(deadlineMs);

  /** Opens a session, asks for a server-side generation and collects it to the end (half-closing after the last token). */
  async function serverGenerate(e: TestExecutor, prompt: number[], n: number): Promise<number[]> {
    const s = session(e);
    s.open();
    await s.next(1);
    s.generate(7, ids(...prompt), n);
    const last = await s.next(n + 1);
    expect(last.kind?.$case === 'token' && last.kind.value.last).toBe(true);
    s.call.end();
    expect((await s.ended).code).toBe(grpc.status.OK);
    const toks = s.tokens();
    expect(toks.map((t) => t.index)).toEqual([...Array(n).keys()]);
    expect(toks.every((t) => t.seq === 7 && t.computeMs > 0 && t.queueMs >= 0)).toBe(true);
    expect(toks.map((t) => t.last)).toEqual([...Array(n).keys()].map((i) => i === n - 1));
    return toks.map((t) => t.token);
  }

  /** The per-step all-server path: one sampled step per token, fed back by the client. */
  async function perStepGenerate(e: TestExecutor, prompt: number[], n: number): Promise<number[]> {
    const s = session(e);
    s.open();
    await s.next(1);
    const got: number[] = [];
    let input = ids(...prompt);
    for (let i = 0; i < n; i++) {
      s.step(i + 1, 0, stageCount, input, true);
      const m = await s.next(i + 2);
      if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'token') throw new Error('expected a token');
      got.push(m.kind.value.output.value);
      input = ids(m.kind.value.output.value);
    }
    s.call.end();
    await s.ended;
    return got;
  }

  beforeAll(async () => {
    model = await makeTempModel();
    a = await startExecutor(model.dir, { batching: true });
    b = await startExecutor(model.dir, { batching: false });
    c = await startExecutor(model.dir, { batching: false, idleTimeoutMs: 150 });
    const pipe = await SplitPipeline.load(model.dir, 'SSSSSS');
    stageCount = pipe.manifest.stages.length;
    for (const p of PROMPTS) expected.set(p, await pipe.generate(p, { maxNewTokens: NEW_TOKENS }));
    await pipe.close();
  });

  afterEach(async () => {
    await Promise.all([a, b, c].map((e) => e?.cancelSessions(3000)));
  });

  afterAll(async () => {
    for (const e of [a, b, c]) await e?.stop();
    model?.remove();
  });

  it('gives the tokens of the one-process run and of the per-step path, prompt by prompt, batching on and off', async () => {
    for (const e of [a, b]) {
      for (const p of PROMPTS) {
        const want = expected.get(p);
        expect(await serverGenerate(e, p, NEW_TOKENS)).toEqual(want);
        expect(await perStepGenerate(e, p, NEW_TOKENS)).toEqual(want);
      }
    }
  });

  it('batches concurrent server-side generations with each other and with per-step sessions, tokens unchanged', async () => {
    for (const e of [a, b]) {
      const before = await e.status();
      const gens = PROMPTS.flatMap((p) => [serverGenerate(e, p, NEW_TOKENS), serverGenerate(e, p, NEW_TOKENS)]);
      const steps = PROMPTS.map((p) => perStepGenerate(e, p, NEW_TOKENS));
      const got = await Promise.all(gens);
      const gotSteps = await Promise.all(steps);
      PROMPTS.forEach((p, i) => {
        expect(got[2 * i]).toEqual(expected.get(p));
        expect(got[2 * i + 1]).toEqual(expected.get(p));
        expect(gotSteps[i]).toEqual(expected.get(p));
      });
      const after = await e.status();
      // a batches (a's counter rose), b never does (batching off)
      if (e === a) expect(after.batchedSteps).toBeGreaterThan(before.batchedSteps);
      else expect(after.batchedSteps).toBe(before.batchedSteps);
      // exactly one scheduler step per token: 8 generations and 4 per-step sessions of NEW_TOKENS each
      expect(after.stepsCompleted - before.stepsCompleted).toBe(12 * NEW_TOKENS);
    }
  });

  it('produces exactly max_new_tokens tokens, the last flagged, then ends OK on half-close', async () => {
    for (const n of [1, 2, 5]) expect(await serverGenerate(b, PROMPTS[0], n)).toEqual(expected.get(PROMPTS[0])?.slice(0, n));
  });

  it('keeps a half-closed stream open until the generation is done', async () => {
    const s = session(a);
    s.open();
    await s.next(1);
    s.generate(1, ids(...PROMPTS[1]), NEW_TOKENS);
    s.call.end();
    expect((await s.ended).code).toBe(grpc.status.OK);
    expect(s.tokens().map((t) => t.token)).toEqual(expected.get(PROMPTS[1]));
  });

  /** Waits (1 s at most) for `e` to hold no session, then expects it to compute no step in the next 200 ms. */
  async function expectFreedAndIdle(e: TestExecutor, what: string): Promise<void> {
    await eventually(async () => (await e.status()).activeSessions === 0, { timeoutMs: 1000, what });
    const steps = (await e.status()).stepsCompleted;
    await new Promise((r) => setTimeout(r, 200));
    expect((await e.status()).stepsCompleted).toBe(steps);
  }

  it('stops computing and frees the session when the client cancels mid-generation', async () => {
    const s = session(a);
    s.open();
    await s.next(1);
    s.generate(1, ids(1, 2, 3), 1000);
    await s.next(4); // three tokens arrived: the loop is running
    s.call.cancel();
    expect(((await s.ended) as grpc.ServiceError).code).toBe(grpc.status.CANCELLED);
    await expectFreedAndIdle(a, 'session freed after cancel');
    expect(s.tokens().length).toBeLessThan(1000);
  });

  it('ends with DEADLINE_EXCEEDED when the deadline passes mid-generation, and frees the session', async () => {
    // 400 ms: far less than the 1022 tokens take even on a quiet machine (about 1 s), far more
    // than the first one (a few ms).
    const s = session(a, 400);
    s.open();
    await s.next(1);
    s.generate(1, ids(1, 2, 3), 1022);
    await s.next(2); // the first token arrived before the deadline
    expect(((await s.ended) as grpc.ServiceError).code).toBe(grpc.status.DEADLINE_EXCEEDED);
    await expectFreedAndIdle(a, 'session freed after the deadline');
    expect(s.tokens().length).toBeLessThan(1022);
  });

  it('does not idle a session out while the server decodes it, and does once it is done', async () => {
    const s = session(c);
    s.open();
    await s.next(1);
    const t0 = Date.now();
    // 600 tokens: several times c's idle timeout even on a quiet machine (200 took 147 ms)
    s.generate(1, ids(5), 600);
    await s.next(601);
    // longer than c's idle timeout of 150 ms, yet every token came
    expect(Date.now() - t0).toBeGreaterThan(150);
    expect(s.tokens()).toHaveLength(600);
    // not half-closed: the idle timeout applies again
    const err = (await s.ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(err.details).toBe('session idle for 150 ms');
  });

  it('refuses a generation past the context limit up front, naming the numbers, and accepts one at the limit', async () => {
    const s = session(a);
    s.open();
    await s.next(1);
    s.generate(1, ids(...PROMPTS[2]), 1014); // 12 + 1014 - 1 = 1025 > 1024 (nPositions)
    const err = (await s.ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err.details).toBe('generate would make the session hold 1025 tokens (prompt 12 + max_new_tokens 1014 - 1); the context must stay <= 1024 tokens');
    expect(s.tokens()).toHaveLength(0);
    const ok = session(a);
    ok.open();
    await ok.next(1);
    ok.generate(1, ids(...PROMPTS[2]), 1013);
    expect((await ok.next(2)).kind?.$case).toBe('token');
  });

  const { INVALID_ARGUMENT: INVALID, FAILED_PRECONDITION: PRECONDITION } = grpc.status;
  type Refusal = [what: string, send: (s: TestSession) => void, code: grpc.status, details: string];
  /** What a session sends after open, refused with the code and details naming the rule. */
  const afterOpen: Refusal[] = [
    [
      'generate after a step that left the stages holding different counts (no handed-over prefill)',
      (s) => (s.step(1, 0, 3, ids(1)), s.generate(2, ids(2), 1)),
      PRECONDITION,
      'generate must be the first message after open, or continue a handed-over prefill in which every stage holds the same number N >= 1 of tokens; given stage 3 holding 0 and stage 0 holding 1 (after 1 step(s))',
    ],
    [
      'generate of more than one token after a handed-over prefill',
      (s) => (s.step(1, 0, 6, ids(1, 2), true), s.generate(2, ids(3, 4), 1)),
      INVALID,
      'generate.input.shape must be [1, 1] after a handed-over prefill (the token it produced; every stage holds 2 tokens), given [1, 2]',
    ],
    [
      'a second generate',
      (s) => (s.generate(1, ids(1), 200), s.generate(2, ids(1), 1)),
      PRECONDITION,
      'generate may be sent once per session, given a second generate',
    ],
    [
      'a step after generate',
      (s) => (s.generate(1, ids(1), 200), s.step(2, 0, 6, ids(1), true)),
      PRECONDITION,
      'step may not follow generate (the server decodes this session), given step seq 2',
    ],
    [
      'float ids',
      (s) => s.generate(1, { dtype: 'float32', shape: [1, 1], data: new Float32Array(1) }, 1),
      INVALID,
      'generate.input.dtype must be DATA_TYPE_INT64 (token ids), given DATA_TYPE_FLOAT32',
    ],
    [
      'ids of shape [2, 1]',
      (s) => s.generate(1, { dtype: 'int64', shape: [2, 1], data: new BigInt64Array(2) }, 1),
      INVALID,
      'generate.input.shape must be [1, T>=1], given [2, 1]',
    ],
    [
      'an empty prompt',
      (s) => s.generate(1, { dtype: 'int64', shape: [1, 0], data: new BigInt64Array(0) }, 1),
      INVALID,
      'generate.input.shape must be [1, T>=1], given [1, 0]',
    ],
    ['an id outside the vocabulary', (s) => s.generate(1, ids(3, 50257), 1), INVALID, 'generate.input token ids must be in 0..50256, given 50257'],
    [
      'no input',
      (s) => s.call.write({ kind: { $case: 'generate', value: { seq: '1', input: undefined, maxNewTokens: 1 } } }),
      INVALID,
      'generate.input is required, given nothing',
    ],
    [
      'bytes that do not fit the shape',
      (s) => s.call.write({ kind: { $case: 'generate', value: { seq: '1', input: { ...toWireTensor(ids(1, 2)), data: Buffer.alloc(9) }, maxNewTokens: 1 } } }),
      INVALID,
      'generate.input.data must hold 16 bytes',
    ],
    ['max_new_tokens 0', (s) => s.generate(1, ids(1), 0), INVALID, 'generate.max_new_tokens must be >= 1, given 0'],
  ];
  it.each<Refusal>([
    ['generate before open', (s) => s.generate(1, ids(1), 1), PRECONDITION, 'the first message must be open, given generate'],
    ...afterOpen.map(([what, send, code, details]): Refusal => [what, (s) => (s.open(), send(s)), code, details]),
  ])('refuses %s and names the rule', async (_what, act, code, details) => {
    const s = session(a);
    act(s);
    const err = (await s.ended) as grpc.ServiceError;
    expect(err.code).toBe(code);
    expect(err.details).toContain(details);
  });

  it('ends a server-side generation with UNAVAILABLE when the executor shuts down, and frees it', async () => {
    const c = await startExecutor(model.dir, { batching: true });
    try {
      const s = c.session();
      s.open();
      await s.next(1);
      s.generate(1, ids(1, 2, 3), 1000);
      await s.next(3);
      await c.server.stop({ graceMs: 0 });
      expect(((await s.ended) as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
      expect(c.server.status().activeSessions).toBe(0);
      expect(s.tokens().length).toBeLessThan(1000);
    } finally {
      await c.stop();
    }
  });
});
