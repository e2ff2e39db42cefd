import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { argmaxRow, SplitPipeline } from '@tandem/model';
import { fromWireTensor, ModelInferRequest, type HostTensor } from '@tandem/protocol';
import { eventually, expectRefusal, makeTempModel, suiteModel, wholeModelMetadata, type TempModel } from '@tandem/testkit';
import { OnnxStageEngine, WorkerStageEngine, type SessionCache, type StageEngine } from '../src';
import { DelegatingEngine } from './delegating-engine';
import { bitsOf, fp32Raw, int64Raw, OipTestClient, outputValues } from './oip-client';
import { ids } from './session-client';
import { startTestExecutor, type TestExecutor, type TestExecutorOptions } from './test-executor';

const PROMPTS = [[15496, 11, 995], [464, 2068, 7586, 21831, 18045], [50256]];

describe('Open Inference Protocol (KServe v2) on a real executor', () => {
  let model: TempModel;
  let exec: TestExecutor;
  let oip: OipTestClient;
  let modelId: string;
  let stageCount: number;
  let vocab: number;
  let nEmbd: number;
  /** Per prompt: the next token of the executor's own generation and the last position's logits of an all-server split step. */
  const reference = new Map<number[], { token: number; logits: Float32Array }>();

  /** The first token of a server-side generation (the executor's own decode loop). */
  async function generatedToken(prompt: number[]): Promise<number> {
    const s = exec.session();
    s.open();
    await s.next(1);
    s.generate(1, ids(...prompt), 1);
    await s.next(2);
    s.call.end();
    await s.ended;
    return s.tokens()[0].token;
  }

  /** The logits of a split step over every stage (not sampled): [1, T, V], the last row. */
  async function splitLogits(prompt: number[]): Promise<Float32Array> {
    const s = exec.session();
    s.open();
    await s.next(1);
    s.step(1, 0, stageCount, ids(...prompt), false);
    const m = await s.next(2);
    s.call.end();
    await s.ended;
    if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'tensor') throw new Error('expected a tensor result');
    const t = fromWireTensor(m.kind.value.output.value, 'result') as HostTensor & { dtype: 'float32' };
    return t.data.slice(t.data.length - vocab);
  }

  beforeAll(async () => {
    model = await makeTempModel();
    // The engine as deployed: a worker thread, with the fused whole-model session.
    const engine = await WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    ({ stageCount, vocabSize: vocab, nEmbd, modelId } = engine);
    exec = await startTestExecutor(engine, { serverId: 'oip-test', maxBatch: 4 });
    oip = new OipTestClient(exec.addr);
    const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(stageCount));
    for (const p of PROMPTS) {
      const [token] = await pipe.generate(p, { maxNewTokens: 1 });
      expect(await generatedToken(p)).toBe(token);
      reference.set(p, { token, logits: await splitLogits(p) });
    }
    await pipe.close();
  });

  afterEach(async () => {
    await exec.cancelSessions(3000);
    // Every call has left the admission (calls count as sessions while they run).
    await eventually(async () => (await exec.status()).activeSessions === 0, { timeoutMs: 3000, what: 'no call admitted' });
  });

  afterAll(async () => {
    oip?.close();
    await exec?.stop();
    model?.remove();
  });

  it('reports the server live and ready, and its name and version', async () => {
    expect(await oip.live()).toBe(true);
    expect(await oip.ready()).toBe(true);
    const pkg = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string };
    expect(await oip.serverMetadata()).toEqual({ name: 'tandem-executor', version: pkg.version, extensions: [] });
  });

  it('reports the whole model and each stage range ready, at version 1 or an empty version', async () => {
    expect(await oip.modelReady(modelId)).toBe(true);
    expect(await oip.modelReady(modelId, '1')).toBe(true);
    expect(await oip.modelReady(`${modelId}/stages/1-${stageCount - 1}`)).toBe(true);
  });

  it('answers ModelReady and ModelMetadata for an unknown name or version with NOT_FOUND naming it', async () => {
    expectRefusal(await oip.refusal(oip.modelReady('gpt-x')), grpc.status.NOT_FOUND, 'name must be', `'${modelId}'`, "given 'gpt-x'");
    expectRefusal(await oip.refusal(oip.modelMetadata(modelId, '7')), grpc.status.NOT_FOUND, "version must be '1' or empty", "given '7'");
    expectRefusal(
      await oip.refusal(oip.modelMetadata(`${modelId}/stages/0-${stageCount + 1}`)),
      grpc.status.NOT_FOUND,
      `0 <= begin < end <= ${stageCount}`,
      `given '${modelId}/stages/0-${stageCount + 1}'`,
    );
  });

  it('describes the whole model and a stage range', async () => {
    expect(await oip.modelMetadata(modelId)).toEqual(wholeModelMetadata(modelId, vocab));
    expect(await oip.modelMetadata(`${modelId}/stages/1-2`, '1')).toMatchObject({
      inputs: [{ name: 'hidden_states', datatype: 'FP32', shape: [-1, -1, nEmbd] }],
      outputs: [{ name: 'hidden_states', datatype: 'FP32', shape: [-1, -1, nEmbd] }],
    });
  });

  it("gives the executor's own next token and bit-identical logits, typed contents in and out", async () => {
    for (const p of PROMPTS) {
      const r = await oip.infer({
        modelName: modelId,
        id: `req-${p.length}`,
        inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, p.length], contents: { int64Contents: p } }],
      });
      expect(r).toMatchObject({ modelName: modelId, modelVersion: '1', id: `req-${p.length}`, rawOutputContents: [] });
      const ref = reference.get(p)!;
      const next = outputValues(r, 'next_token');
      expect(next.tensor).toMatchObject({ datatype: 'INT64', shape: [1, 1] });
      expect([...next.data]).toEqual([BigInt(ref.token)]);
      const logits = outputValues(r, 'logits');
      expect(logits.tensor).toMatchObject({ datatype: 'FP32', shape: [1, vocab] });
      expect(bitsOf(logits.data as Float32Array).equals(bitsOf(ref.logits))).toBe(true);
    }
  });

  it('answers raw contents for raw contents, one row per batch entry, the outputs in the order asked', async () => {
    const [a, b] = [PROMPTS[0], [PROMPTS[1][0], PROMPTS[1][1], PROMPTS[1][2]]];
    const r = await oip.infer({
      modelName: modelId,
      inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [2, 3] }],
      outputs: [{ name: 'logits' }, { name: 'next_token' }],
      rawInputContents: [int64Raw([...a, ...b])],
    });
    expect(r.outputs.map((o) => [o.name, o.shape, o.contents])).toEqual([
      ['logits', [2, vocab], undefined],
      ['next_token', [2, 1], undefined],
    ]);
    expect(r.rawOutputContents.map((c) => c.byteLength)).toEqual([2 * vocab * 4, 16]);
    const logits = outputValues(r, 'logits').data as Float32Array;
    expect(bitsOf(logits.subarray(0, vocab)).equals(bitsOf(reference.get(PROMPTS[0])!.logits))).toBe(true);
    // Row b alone gives the same answer as in the batch.
    const alone = await oip.infer({ modelName: modelId, inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 3] }], rawInputContents: [int64Raw(b)] });
    expect(bitsOf(logits.subarray(vocab)).equals(bitsOf(outputValues(alone, 'logits').data as Float32Array))).toBe(true);
    const next = outputValues(r, 'next_token').data as BigInt64Array;
    expect(next[0]).toBe(BigInt(reference.get(PROMPTS[0])!.token));
    expect(next[1]).toBe(BigInt(argmaxRow(logits, vocab, 1)));
  });

  it('returns only the outputs asked for', async () => {
    const r = await oip.infer({
      modelName: modelId,
      inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], contents: { int64Contents: [50256] } }],
      outputs: [{ name: 'next_token' }],
    });
    expect(r.outputs.map((o) => o.name)).toEqual(['next_token']);
    expect(r.outputs[0].contents?.int64Contents).toEqual([reference.get(PROMPTS[2])!.token]);
  });

  it('chains stage ranges: hidden states out of one range into the next give the whole model’s logits', async () => {
    const p = PROMPTS[1];
    const cut = 3;
    const first = await oip.infer({
      modelName: `${modelId}/stages/0-${cut}`,
      inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, p.length] }],
      rawInputContents: [int64Raw(p)],
    });
    const hidden = outputValues(first, 'hidden_states');
    expect(hidden.tensor).toMatchObject({ datatype: 'FP32', shape: [1, p.length, nEmbd] });
    const second = await oip.infer({
      modelName: `${modelId}/stages/${cut}-${stageCount}`,
      inputs: [{ name: 'hidden_states', datatype: 'FP32', shape: [1, p.length, nEmbd] }],
      rawInputContents: [fp32Raw(hidden.data as Float32Array)],
    });
    const logits = outputValues(second, 'logits');
    expect(logits.tensor.shape).toEqual([1, p.length, vocab]);
    const last = (logits.data as Float32Array).subarray((p.length - 1) * vocab);
    expect(bitsOf(last).equals(bitsOf(reference.get(p)!.logits))).toBe(true);
    // Typed FP32 contents in give the same values out.
    const typed = await oip.infer({
      modelName: `${modelId}/stages/${cut}-${stageCount}`,
      inputs: [{ name: 'hidden_states', datatype: 'FP32', shape: [1, p.length, nEmbd], contents: { fp32Contents: [...hidden.data].map(Number) } }],
    });
    expect(bitsOf(outputValues(typed, 'logits').data as Float32Array).equals(bitsOf(logits.data as Float32Array))).toBe(true);
  });

  it('runs the rows of a call batched with each other through the scheduler', async () => {
    const before = (await exec.status()).batchedSteps;
    await oip.infer({
      modelName: `${modelId}/stages/0-1`,
      inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [4, 2] }],
      rawInputContents: [int64Raw([1, 2, 3, 4, 5, 6, 7, 8])],
    });
    expect((await exec.status()).batchedSteps).toBeGreaterThan(before);
  });

  it('answers ModelInfer for an unknown model or version with NOT_FOUND naming it', async () => {
    const input = [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], contents: { int64Contents: [1] } }];
    expectRefusal(await oip.refusal(oip.infer({ modelName: 'nope', inputs: input })), grpc.status.NOT_FOUND, 'model_name must be', "given 'nope'");
    expectRefusal(await oip.refusal(oip.infer({ modelName: modelId, modelVersion: '3', inputs: input })), grpc.status.NOT_FOUND, 'model_version', "given '3'");
  });

  it('answers a bad input with INVALID_ARGUMENT naming the field, the rule and the value', async () => {
    const cases: [Parameters<OipTestClient['infer']>[0], string[]][] = [
      [
        { modelName: modelId, inputs: [{ name: 'input_ids', datatype: 'FP32', shape: [1, 1], contents: { fp32Contents: [1] } }] },
        ["inputs[0].datatype must be 'INT64'", "given 'FP32'"],
      ],
      [{ modelName: modelId, inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 2, 3] }] }, ['inputs[0].shape must be [B, T]', 'given [1, 2, 3]']],
      [
        { modelName: modelId, inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 2] }], rawInputContents: [Buffer.alloc(12)] },
        ['raw_input_contents[0] must hold 16 bytes', 'given 12'],
      ],
      [
        { modelName: modelId, inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], contents: { int64Contents: [vocab] } }] },
        [`token ids must be in 0..${vocab - 1}`, `given ${vocab}`],
      ],
      [
        { modelName: modelId, inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 100_000] }], rawInputContents: [Buffer.alloc(800_000)] },
        ['inputs[0].shape[1] (tokens) must be <=', "the executor's context", 'given 100000'],
      ],
      [
        { modelName: modelId, inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], contents: { int64Contents: [2 ** 60] } }] },
        ['inputs[0].contents.int64_contents[0] must be an integer in', String(2n ** 60n)],
      ],
      [
        {
          modelName: `${modelId}/stages/1-2`,
          inputs: [{ name: 'hidden_states', datatype: 'FP32', shape: [1, 1, nEmbd], contents: { fp32Contents: new Array<number>(nEmbd).fill(Infinity) } }],
        },
        ['must hold finite FP32 values', 'given Infinity at index 0'],
      ],
      [
        {
          modelName: modelId,
          inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], contents: { int64Contents: [1] } }],
          outputs: [{ name: 'probs' }],
        },
        ["outputs[0].name must be one of 'next_token', 'logits'", "given 'probs'"],
      ],
      [
        { modelName: modelId, inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [5, 1] }], rawInputContents: [int64Raw([1, 2, 3, 4, 5])] },
        ['1 <= B <= 4', 'given [5, 1]'],
      ],
    ];
    for (const [req, parts] of cases) expectRefusal(await oip.refusal(oip.infer(req)), grpc.status.INVALID_ARGUMENT, ...parts);
    // Still serving after every refusal.
    expect(await oip.ready()).toBe(true);
  });
});

describe('Open Inference Protocol under the executor’s limits and lifecycle', () => {
  const model = suiteModel();
  const onnx = (): Promise<OnnxStageEngine> => OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
  /** A request for the next token after token id 1, to `modelName`. */
  const oneToken = (modelName: string): Parameters<OipTestClient['infer']>[0] => ({
    modelName,
    inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], contents: { int64Contents: [1] } }],
  });

  /** Runs `fn` on an executor of `engine` (with `opts`) and an OIP client of it, then closes the client and stops the executor. */
  async function withOip(engine: StageEngine, fn: (exec: TestExecutor, oip: OipTestClient) => Promise<void>, opts: TestExecutorOptions = {}): Promise<void> {
    const exec = await startTestExecutor(engine, opts);
    const oip = new OipTestClient(exec.addr);
    try {
      await fn(exec, oip);
    } finally {
      oip.close();
      await exec.stop();
    }
  }

  it('admits a call like a session: refused with RESOURCE_EXHAUSTED when every session is taken', async () =>
    withOip(
      await onnx(),
      async (exec, oip) => {
        const s = exec.session();
        s.open();
        await s.next(1);
        expectRefusal(await oip.refusal(oip.infer(oneToken(exec.server.status().modelId))), grpc.status.RESOURCE_EXHAUSTED, 'EXECUTOR_MAX_SESSIONS');
        await exec.cancelSessions(3000);
        const r = await oip.infer(oneToken(exec.server.status().modelId));
        expect(r.outputs.map((o) => o.name)).toEqual(['next_token', 'logits']);
      },
      { maxSessions: 1 },
    ));

  it('reports ServerReady and ModelReady false while draining, and refuses inference with UNAVAILABLE', async () =>
    withOip(await onnx(), async (exec, oip) => {
      const modelId = exec.server.status().modelId;
      // An open session keeps the executor draining (its grace) while the test looks.
      const s = exec.session();
      s.open();
      await s.next(1);
      const stopped = exec.server.stop({ graceMs: 20_000 });
      await eventually(async () => !(await oip.ready()), { timeoutMs: 3000, what: 'ServerReady false' });
      expect(await oip.live()).toBe(true);
      expect(await oip.modelReady(modelId)).toBe(false);
      expectRefusal(await oip.refusal(oip.infer(oneToken(modelId))), grpc.status.UNAVAILABLE, 'draining');
      s.call.end();
      await stopped;
    }));

  it('reports ServerLive and ServerReady false once the inference engine failed, and refuses inference with UNAVAILABLE', async () => {
    const engine = new FailingEngine(await onnx());
    await withOip(engine, async (_exec, oip) => {
      expect(await oip.live()).toBe(true);
      engine.fail(new Error('the engine thread exited'));
      await eventually(async () => !(await oip.live()), { timeoutMs: 3000, what: 'ServerLive false' });
      expect(await oip.ready()).toBe(false);
      expectRefusal(await oip.refusal(oip.infer(oneToken(engine.modelId))), grpc.status.UNAVAILABLE, 'cannot run stages');
    });
  });

  it('cancels the rows of a cancelled call and frees its admission and KV bytes', async () => {
    const engine = new GatedEngine(await onnx());
    await withOip(engine, async (exec, oip) => {
      try {
        engine.closeGate();
        let settle!: (e: grpc.ServiceError | null) => void;
        const ended = new Promise<grpc.ServiceError | null>((r) => (settle = r));
        const request = ModelInferRequest.fromPartial({
          modelName: exec.server.status().modelId,
          inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [2, 8] }],
          rawInputContents: [int64Raw(new Array<number>(16).fill(7))],
        });
        const call = oip.client.modelInfer(request, (e) => settle(e));
        await eventually(async () => (await exec.status()).activeSessions === 1 && engine.waiting > 0, { timeoutMs: 5000, what: 'the call inside the engine' });
        expect(exec.server.kvBytes().used).toBeGreaterThan(0);
        call.cancel();
        expect((await ended)?.code).toBe(grpc.status.CANCELLED);
        engine.openGate();
        await eventually(async () => (await exec.status()).activeSessions === 0 && (await exec.status()).queueDepth === 0, {
          timeoutMs: 5000,
          what: 'the call freed',
        });
        expect(exec.server.kvBytes().used).toBe(0);
      } finally {
        engine.openGate();
      }
    });
  });
});

/** An engine whose stage calls wait while its gate is closed (a call held inside the engine). */
class GatedEngine extends DelegatingEngine {
  private gate: Promise<void> | undefined;
  private release: (() => void) | undefined;
  /** Calls waiting at the gate now. */
  waiting = 0;
  closeGate(): void {
    this.gate = new Promise((r) => (this.release = r));
  }
  openGate(): void {
    this.release?.();
    this.gate = undefined;
  }
  override async runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly SessionCache[]): Promise<HostTensor[]> {
    if (this.gate) {
      this.waiting++;
      await this.gate;
      this.waiting--;
    }
    return super.runBatch(stage, inputs, caches);
  }
}

/** An engine the test declares failed (as a worker engine whose thread died reports it). */
class FailingEngine extends DelegatingEngine {
  fail!: (err: Error) => void;
  private readonly failure = new Promise<Error>((r) => (this.fail = r));
  override get failed(): Promise<Error> {
    return this.failure;
  }
}
