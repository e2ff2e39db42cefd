import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { greedyToken, lastPosition, modelIdOf, readManifest, SplitPipeline, StageRunner, type KvCache, type StageState } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import { makeTempModel, type TempModel } from '@tandem/testkit';
import { generate, type GenerationDeps } from '../src/generation';
import { LinkEmulator, LinkEstimator } from '../src/link';
import { LocalStages } from '../src/local-stages';
import type { RemoteSession, RemoteStepResult, RemoteToken, TakenState } from '../src/remote-session';
import { recordReplay, ReplayMissError, ReplayRecording } from '../src/replay';

// The hand-over logic of phased plans (generation.ts) against a stand-in for the executor
// session: a real StageRunner holding the server's stages, which checks what the executor
// checks (a step's stages hold the same count, a kv_put goes to an empty stage in order, a
// kv_take to a stage that holds tokens, a generate continues from a whole handed-over prefill)
// and logs what it was asked. The device side is the agent's real LocalStages. The real
// executor is used in e2e/test/phased.int.spec.ts.

const PROMPT = [464, 2068, 7586, 21831, 18045];
const NEW = 5;

/** An UNAVAILABLE as a lost executor session ends with. */
const lost = (): Error => Object.assign(new Error('14 UNAVAILABLE: executor went away'), { code: status.UNAVAILABLE, details: 'executor went away' });

class FakeSession {
  readonly log: string[] = [];
  readonly counts: number[];
  readonly cache: KvCache;
  refusals = 0;
  readonly deadline = Infinity;
  ended = false;
  cancelled = false;
  /** Throws lost() at the first operation whose log line starts with this. */
  failOn: string | undefined;
  private generated = false;

  constructor(readonly runner: StageRunner) {
    this.counts = runner.manifest.stages.map(() => 0);
    this.cache = runner.newCache();
  }

  private check(op: string): void {
    this.log.push(op);
    if (this.cancelled || this.ended) throw new Error(`${op} on a session that ended`);
    if (this.failOn && op.startsWith(this.failOn)) {
      this.failOn = undefined;
      this.cancelled = true;
      throw lost();
    }
    if (this.generated) throw new Error(`${op} after generate`);
  }

  async step(begin: number, end: number, input: HostTensor, sample: boolean): Promise<RemoteStepResult> {
    this.check(`step ${begin}-${end}`);
    const T = input.shape[1];
    for (let s = begin; s < end; s++)
      if (this.counts[s] !== this.counts[begin])
        throw new Error(`step ${begin}-${end}: stage ${s} holds ${this.counts[s]}, stage ${begin} ${this.counts[begin]}`);
    let x = input;
    for (let s = begin; s < end; s++) {
      if (sample && s === this.counts.length - 1 && x.dtype === 'float32') x = lastPosition(x);
      x = await this.runner.run(s, x, this.cache);
      this.counts[s] += T;
    }
    const output = sample ? greedyToken(x as { data: Float32Array }, this.runner.manifest.config.vocabSize) : x;
    return { output, computeMs: 1, queueMs: 0, serviceMs: 1, roundTripMs: 1, downBytes: typeof output === 'number' ? 8 : output.data.byteLength };
  }

  kvPut(stage: number, state: StageState): number {
    this.check(`put ${stage}`);
    if (this.counts[stage] !== 0) throw new Error(`put ${stage}: the stage holds ${this.counts[stage]}`);
    const kind = this.runner.manifest.stages[stage].kind;
    if (kind === 'attn' || kind === 'embed') this.runner.appendState(stage, this.cache, state);
    else if (state.key || state.value) throw new Error(`put ${stage}: tensors for a ${kind} stage`);
    this.counts[stage] = state.tokens;
    return (state.key?.data.byteLength ?? 0) + (state.value?.data.byteLength ?? 0);
  }

  async kvTake(stage: number): Promise<TakenState> {
    this.check(`take ${stage}`);
    if (this.counts[stage] === 0) throw new Error(`take ${stage}: the stage holds nothing`);
    const kind = this.runner.manifest.stages[stage].kind;
    let state: StageState = { tokens: this.counts[stage] };
    if (kind === 'attn' || kind === 'embed') {
      state = this.runner.exportState(stage, this.cache);
      this.runner.dropState(stage, this.cache);
    }
    this.counts[stage] = 0;
    const bytes = (state.key?.data.byteLength ?? 0) + (state.value?.data.byteLength ?? 0);
    return { state, bytes, chunks: 1 };
  }

  async generate(prompt: HostTensor, maxNewTokens: number, onToken: (t: RemoteToken) => void): Promise<void> {
    this.check(`generate ${prompt.shape[1]}`);
    const N = this.counts[0];
    if (this.counts.some((c) => c !== N)) throw new Error(`generate: the stages hold ${this.counts.join(',')}`);
    if (N > 0 && prompt.shape[1] !== 1) throw new Error('generate after a hand-over takes one token');
    this.generated = true;
    let x: HostTensor = prompt;
    for (let i = 0; i < maxNewTokens; i++) {
      for (let s = 0; s < this.counts.length; s++) {
        if (s === this.counts.length - 1 && x.dtype === 'float32') x = lastPosition(x);
        x = await this.runner.run(s, x, this.cache);
      }
      const token = greedyToken(x as { data: Float32Array }, this.runner.manifest.config.vocabSize);
      onToken({ index: i, token, computeMs: 1, queueMs: 0, last: i === maxNewTokens - 1 });
      x = { dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(BigInt(token)) };
    }
  }

  end(): void {
    this.ended = true;
  }
  cancel(): void {
    this.cancelled = true;
  }
}

/**
 * Deps of `local` whose every openRemote opens a new FakeSession on `server` (kept in
 * `sessions`), over an instant link; `first` adjusts the first session; `over` on top.
 */
function fakeDeps(
  server: StageRunner,
  local: LocalStages,
  sessions: FakeSession[],
  over: Partial<GenerationDeps> = {},
  first?: (f: FakeSession) => void,
): GenerationDeps {
  return {
    local,
    openRemote: async () => {
      const f = new FakeSession(server);
      if (sessions.length === 0) first?.(f);
      sessions.push(f);
      return f as unknown as RemoteSession;
    },
    emulator: new LinkEmulator({ latencyMs: 0, bytesPerMs: 0 }, { latencyMs: 0, bytesPerMs: 0 }),
    estimator: new LinkEstimator(),
    vocabSize: server.manifest.config.vocabSize,
    signal: new AbortController().signal,
    ...over,
  };
}

describe('phased generation: the hand-over between the prefill and the decode', () => {
  let model: TempModel;
  let server: StageRunner;
  let local: LocalStages;
  let S: number;
  let expected: number[];
  /** Bytes of one attention stage's keys plus values for the prompt. */
  let kvBytes: number;

  beforeAll(async () => {
    model = await makeTempModel();
    server = await StageRunner.load(model.dir, { intraOpNumThreads: 1 });
    local = await LocalStages.load(model.dir, [0, 1, 2, 3, 4, 5], { slowdown: 1, intraOpNumThreads: 1 });
    S = server.manifest.stages.length;
    const pipe = await SplitPipeline.load(model.dir, 'C'.repeat(S));
    expected = await pipe.generate(PROMPT, { maxNewTokens: NEW });
    await pipe.close();
    kvBytes = 2 * 4 * PROMPT.length * server.manifest.config.nEmbd;
  });
  afterAll(async () => {
    await server?.close();
    await local?.close();
    model?.remove();
  });

  const depsOf = (sessions: FakeSession[], over: Partial<GenerationDeps> = {}, first?: (f: FakeSession) => void): GenerationDeps =>
    fakeDeps(server, local, sessions, over, first);

  it.each([
    // [prefill, decode, the session's log, attention stages put, attention stages taken]
    ['SSSSSS', 'CCCCCC', ['step 0-6', 'take 0', 'take 1', 'take 2', 'take 3', 'take 4', 'take 5'], 0, 2],
    ['CCCCCC', 'SSSSSS', ['put 0', 'put 1', 'put 2', 'put 3', 'put 4', 'put 5', 'generate 1'], 2, 0],
    ['CCSSSC', 'CSSCSC', ['step 2-5', 'take 3', 'put 1', 'step 1-3', 'step 4-5', 'step 1-3', 'step 4-5', 'step 1-3', 'step 4-5', 'step 1-3', 'step 4-5'], 1, 1],
    ['CSSSSS', 'CCCSSC', ['step 1-6', 'take 1', 'take 2', 'take 5', 'step 3-5', 'step 3-5', 'step 3-5', 'step 3-5'], 0, 1],
  ])('prefill %s, decode %s: the one-process tokens, moving exactly the stages that change side', async (prefill, decode, log, put, taken) => {
    const sessions: FakeSession[] = [];
    const tokens: [number, number][] = [];
    const stats = await generate(depsOf(sessions), prefill, PROMPT, NEW, (id, i) => tokens.push([id, i]), decode);
    expect(stats.ids).toEqual(expected);
    expect(tokens).toEqual(expected.map((id, i) => [id, i]));
    expect(sessions).toHaveLength(1);
    expect(sessions[0].log).toEqual(log);
    expect(stats.kvUpBytes).toBe(put * kvBytes);
    expect(stats.kvDownBytes).toBe(taken * kvBytes);
    expect(stats.handoverMs).toBeGreaterThan(0);
    expect(stats.resumes).toBe(0);
    // The session was half-closed at the end (or after the takes, when the decode needs it no more), never cancelled.
    expect(sessions[0].cancelled).toBe(false);
    expect(sessions[0].ended).toBe(true);
  });

  it.each([
    // [prefill, decode, the uplink's crossings: 'up' pays the latency, 'behind' follows messages already on the link]
    ['CCCCCC', 'SSSSSS', (kv: number) => [`up ${2 * kv}`, 'behind 8']],
    // The prefill's hidden state (5 positions of 64 float32), the embedding's count-only put, the token.
    ['CSSSSS', 'SSSSSS', () => ['up 1280', 'up 0', 'behind 8']],
    // A split decode: its first step pays its own crossing, as the plan prices each decode pass.
    ['CCSSSC', 'CSSCSC', (kv: number) => ['up 1280', 'up 16', `up ${kv}`, ...Array<string>(8).fill('up 256')]],
  ])('prefill %s, decode %s: a generate goes up right behind the hand-over puts, not a latency later', async (prefill, decode, crossings) => {
    const ups: string[] = [];
    class Recording extends LinkEmulator {
      override uplink(bytes: number): Promise<void> {
        ups.push(`up ${bytes}`);
        return super.uplink(bytes);
      }
      override uplinkBehind(bytes: number): Promise<void> {
        ups.push(`behind ${bytes}`);
        return super.uplinkBehind(bytes);
      }
    }
    const emulator = new Recording({ latencyMs: 0, bytesPerMs: 0 }, { latencyMs: 0, bytesPerMs: 0 });
    const stats = await generate(depsOf([], { emulator }), prefill, PROMPT, NEW, () => undefined, decode);
    expect(stats.ids).toEqual(expected);
    expect(ups).toEqual(crossings(kvBytes));
  });

  it('moves nothing for a single token (there is no decode), and an equal or absent decode placement is the plain generation', async () => {
    for (const [decode, n] of [
      ['CCCCCC', 1],
      ['SSSSSS', 1],
      ['CCSSSC', NEW],
      ['', NEW],
    ] as const) {
      const sessions: FakeSession[] = [];
      const stats = await generate(depsOf(sessions), 'CCSSSC', PROMPT, n, () => {}, decode);
      expect(stats.ids).toEqual(expected.slice(0, n));
      expect(sessions[0].log.filter((l) => !l.startsWith('step'))).toEqual([]);
      expect([stats.handoverMs, stats.kvUpBytes, stats.kvDownBytes]).toEqual([0, 0, 0]);
    }
  });

  it('refuses a decode placement of another length or other letters', async () => {
    await expect(generate(depsOf([]), 'CCSSSC', PROMPT, NEW, () => {}, 'CCSSS')).rejects.toThrow(
      "decodePlacement must be 6 letters C or S like placement, given 'CCSSS'",
    );
    await expect(generate(depsOf([]), 'CCSSSC', PROMPT, NEW, () => {}, 'CCXSSC')).rejects.toThrow('decodePlacement must be 6 letters C or S');
  });

  it('after a session lost in the hand-over, continues with the decode placement from the history on a new session', async () => {
    for (const [prefill, decode, failOn, newLog] of [
      // lost at a put: the new session prefills the history with the decode placement (all-server: generate from it)
      ['CCCCCC', 'SSSSSS', 'put 3', ['generate 6']],
      // lost at a take: the history again with the decode placement, one step per token
      ['SSSSSS', 'CSSCCC', 'take 3', ['step 1-3', 'step 1-3', 'step 1-3', 'step 1-3']],
      // lost at the first decode step after the puts: the history again, split with the decode placement, then on
      ['CCCCCC', 'CSSSSC', 'step 1-5', ['step 1-5', 'step 1-5', 'step 1-5', 'step 1-5']],
      // lost in the prefill: resumed with the decode placement at once, and nothing is handed over
      ['SSSSSS', 'CSSCCC', 'step 0-6', ['step 1-3', 'step 1-3', 'step 1-3', 'step 1-3', 'step 1-3']],
    ] as const) {
      const sessions: FakeSession[] = [];
      const resumed: number[] = [];
      const deps = depsOf(
        sessions,
        { resume: { deadline: Date.now() + 10_000, initialBackoffMs: 1, onResumed: ({ tokens }) => resumed.push(tokens) } },
        (f) => {
          f.failOn = failOn;
        },
      );
      const stats = await generate(deps, prefill, PROMPT, NEW, () => {}, decode);
      expect(stats.ids).toEqual(expected);
      expect(stats.resumes).toBe(1);
      expect(sessions).toHaveLength(2);
      expect(sessions[0].cancelled).toBe(true);
      expect(sessions[1].log).toEqual(newLog);
      // the token before the loss counted (none when it was lost in the prefill)
      expect(resumed).toEqual([failOn.startsWith('step 0') ? 0 : 1]);
    }
  });

  it('without resume options a lost hand-over fails the generation with the executor status', async () => {
    const sessions: FakeSession[] = [];
    const run = generate(
      depsOf(sessions, {}, (f) => (f.failOn = 'take 3')),
      'CSSSSC',
      PROMPT,
      NEW,
      () => {},
      'CCCCCC',
    );
    await expect(run).rejects.toMatchObject({ code: status.UNAVAILABLE });
    expect(sessions).toHaveLength(1);
  });

  it('pays the emulated link for the keys and values moved', async () => {
    const bytesPerMs = 20; // the prompt's keys and values of two attention stages take 2 x kvBytes / 20 ms each way
    const emulator = new LinkEmulator({ latencyMs: 0, bytesPerMs }, { latencyMs: 0, bytesPerMs });
    const up = await generate(depsOf([], { emulator }), 'CCCCCC', PROMPT, 2, () => {}, 'SSSSSS');
    expect(up.kvUpBytes).toBe(2 * kvBytes);
    expect(up.handoverMs).toBeGreaterThanOrEqual((2 * kvBytes) / bytesPerMs - 1);
    const down = await generate(depsOf([], { emulator }), 'SSSSSS', PROMPT, 2, () => {}, 'CCCCCC');
    expect(down.kvDownBytes).toBe(2 * kvBytes);
    expect(down.handoverMs).toBeGreaterThanOrEqual((2 * kvBytes) / bytesPerMs - 1);
  });
});

describe('phased generation on a replayed device', () => {
  let model: TempModel;
  let dir: string;
  let server: StageRunner;
  let rec: ReplayRecording;
  let local: LocalStages;

  beforeAll(async () => {
    model = await makeTempModel();
    dir = mkdtempSync(join(tmpdir(), 'tandem-phased-replay-'));
    const m = await readManifest(model.dir);
    const file = join(dir, 'rec.bin');
    await recordReplay({ modelDir: model.dir, modelId: modelIdOf(model.dir), prompts: [{ ids: PROMPT, maxNewTokens: NEW }], out: file });
    rec = ReplayRecording.load(file, { modelId: modelIdOf(model.dir), stageCount: m.stages.length, nEmbd: m.config.nEmbd, vocabSize: m.config.vocabSize });
    local = await LocalStages.load(model.dir, [0, 1, 2, 3, 4, 5], { slowdown: 1, intraOpNumThreads: 1, replay: rec });
    await local.profile({ promptTokens: 4, decodeSteps: 1, rounds: 1, nEmbd: m.config.nEmbd });
    server = await StageRunner.load(model.dir, { intraOpNumThreads: 1 });
  });
  afterAll(async () => {
    await server?.close();
    await local?.close();
    model?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  const run = async (prefill: string, decode: string): Promise<{ ids: number[]; log: string[] }> => {
    const sessions: FakeSession[] = [];
    const cursor = local.armReplay(PROMPT);
    const running = generate(fakeDeps(server, local, sessions), prefill, PROMPT, NEW, (id) => cursor?.advance(id), decode);
    local.disarm();
    const stats = await running;
    return { ids: stats.ids, log: sessions[0]?.log ?? [] };
  };

  it('hands the recorded keys and values to the server, which decodes the recorded tokens', async () => {
    const recorded = rec.prompt(PROMPT)?.tokens;
    expect(recorded).toHaveLength(NEW);
    const up = await run('CCCCCC', 'CSSSSC');
    expect(up.ids).toEqual(recorded);
    expect(up.log.slice(0, 4)).toEqual(['put 1', 'put 2', 'put 3', 'put 4']);
    // and the server's prefill is taken into the replayed device's bookkeeping
    const down = await run('SSSSSS', 'CCCCCC');
    expect(down.ids).toEqual(recorded);
    expect(down.log[0]).toBe('step 0-6');
  });

  it('records the real keys and values after the prefill, and gives them only between the prefill and the decode', async () => {
    const ref = server.newCache();
    let x: HostTensor = { dtype: 'int64', shape: [1, PROMPT.length], data: BigInt64Array.from(PROMPT, (v) => BigInt(v)) };
    for (let s = 0; s < 6; s++) x = await server.run(s, x, ref);
    const real = server.exportState(3, ref);
    ref.clear();
    const [t0, t1] = rec.prompt(PROMPT)?.tokens ?? [];
    const cursor = rec.cursor(PROMPT);
    expect(() => cursor.prefillKv(3)).toThrow(ReplayMissError); // before the prefill
    cursor.advance(t0);
    const kv = cursor.prefillKv(3);
    expect(kv.key.shape).toEqual(real.key?.shape);
    expect(kv.key.data).toEqual(real.key?.data);
    expect(kv.value.data).toEqual(real.value?.data);
    expect(() => cursor.prefillKv(2)).toThrow('holds no keys and values of stage 2'); // an MLP stage
    cursor.advance(t1);
    expect(() => cursor.prefillKv(3)).toThrow('the recording keeps the keys and values after the prefill only, asked after 2 tokens');
    const other = rec.cursor([1, 2, 3]);
    other.advance(5);
    expect(() => other.prefillKv(3)).toThrow('is not in the recorded pool');
  });
});
