import * as grpc from '@grpc/grpc-js';
import { greedyToken, lastPosition, slicePositions, SplitPipeline, StageRunner, type Float32Tensor, type KvCache, type StageKind } from '@tandem/model';
import { fromWireTensor, type HostTensor, type KvChunk, type SessionResponse } from '@tandem/protocol';
import { eventually, expectRefusal, makeTempModel, maxAbsDiff, type TempModel } from '@tandem/testkit';
import { OnnxStageEngine, WorkerStageEngine, type StageEngine } from '../src';
import { ids, type TestSession } from './session-client';
import { startTestExecutor, type TestExecutor } from './test-executor';

// Phased plans (executor.proto, "Phased plans"): the prefill and the decode place stages apart,
// and each stage that changes side moves its state once over the session stream (kv_put to the
// server, kv_take to the client). A real executor on a real tiny model (6 stages: embed, attn,
// mlp, attn, mlp, head; nEmbd 64, 4 heads) against a client that runs its stages with its own
// StageRunner; every generation must give the one-process tokens.

const PROMPTS = [
  [15496, 11, 995, 318, 257, 1332, 286, 262, 1917],
  [464, 2068, 7586],
];
const NEW_TOKENS = 6;
/** Key plus value bytes of one position of one attention stage: 2 × 64 × 4. */
const KV_BYTES_PER_POSITION = 512;

/** [prefill placement, decode placement]: one letter per stage, C (client) or S (server). */
const PAIRS: readonly (readonly [string, string])[] = [
  ['SSSSSS', 'CCCCCC'], // server prefill, client decode: every stage taken
  ['CCCCCC', 'SSSSSS'], // client prefill, server decode: every stage put, then generate
  ['CSSSSC', 'CCCSSC'], // block 0 taken
  ['CCCSSC', 'CSSSSC'], // block 0 put
  ['CSSCCC', 'CCCSSC'], // block 0 taken, block 1 put
  ['CCCSSS', 'SSSSSS'], // embed and block 0 put, then generate
  ['CCCCCC', 'SSSSSC'], // all but the head put: the server's embed continues at the prompt's length
  ['SSSSSS', 'SSSSSS'], // nothing moves: generate continues the prefill's step
];

interface Handover {
  /** Positions per kv_put chunk (default: the whole stage in one). */
  readonly putTokens?: number;
  /** kv_take.max_chunk_bytes (default 0: 1 MiB). */
  readonly takeBytes?: number;
}

/** The client's side: every stage loaded, one cache per generation. */
let client: StageRunner;
let kinds: StageKind[];
let n: number;

/** Loads the client's runner on `model` (setting client, n and kinds) and returns the one-process tokens of each prompt. */
async function loadClient(model: TempModel, prompts: readonly number[][]): Promise<number[][]> {
  client = await StageRunner.load(model.dir, { intraOpNumThreads: 1 });
  n = client.manifest.stages.length;
  kinds = client.manifest.stages.map((s) => s.kind);
  const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(n));
  const tokens: number[][] = [];
  for (const p of prompts) tokens.push(await pipe.generate(p, { maxNewTokens: NEW_TOKENS }));
  await pipe.close();
  return tokens;
}

/** A session on `e` with a counter of the answers consumed. */
class Driven {
  seq = 0;
  private read = 1;
  constructor(readonly s: TestSession) {}
  async open(): Promise<void> {
    this.s.open();
    expect((await this.s.next(1)).kind?.$case).toBe('opened');
  }
  async answer(): Promise<SessionResponse> {
    return this.s.next(++this.read);
  }
  /** The chunks answering a kv_take, up to the one flagged last. */
  async chunks(): Promise<KvChunk[]> {
    const out: KvChunk[] = [];
    for (;;) {
      const m = await this.answer();
      if (m.kind?.$case !== 'kvChunk') throw new Error(`expected a kv_chunk, got ${m.kind?.$case}`);
      out.push(m.kind.value);
      if (m.kind.value.last) return out;
    }
  }
}

/** The outputs of every stage for one pass over `input`, run one stage at a time on the one-process reference cache `ref` (the head on the last position). */
async function reference(ref: KvCache, input: HostTensor): Promise<Float32Tensor[]> {
  const outs: Float32Tensor[] = [];
  let x = input;
  for (let s = 0; s < n; s++) {
    if (kinds[s] === 'head') x = lastPosition(x as Float32Tensor);
    x = await client.run(s, x, ref);
    outs.push(x as Float32Tensor);
  }
  return outs;
}

/** The output of stage `s` must be the reference's, up to batching's float rounding. */
function expectClose(got: HostTensor, want: Float32Tensor, s: number, what: string): void {
  const diff = maxAbsDiff(got.data as Float32Array, want.data);
  if (!(diff < 1e-4)) throw new Error(`${what}: the output of stage ${s} differs from the one-process run by ${diff}`);
}

/**
 * One pass over `input` with `placement`: client runs on the client's runner, server runs as
 * one step each (sampled when it ends with the head). Every stage output that comes back or is
 * made here is checked against the one-process run of the same pass on `ref` (so a state
 * handed over at a wrong position or out of order fails here, not only when a token changes).
 * Returns the greedy next token.
 */
async function pass(d: Driven, cache: KvCache, ref: KvCache, placement: string, input: HostTensor): Promise<number> {
  const want = await reference(ref, input);
  let x = input;
  let b = 0;
  while (b < n) {
    let e = b + 1;
    while (e < n && placement[e] === placement[b]) e++;
    if (placement[b] === 'C') {
      x = await client.runRange(b, e, x, cache, { lastOnly: e === n });
      expectClose(x, want[e - 1], e - 1, `client ${placement}`);
    } else {
      d.s.step(++d.seq, b, e, x, e === n);
      const m = await d.answer();
      if (m.kind?.$case !== 'result') throw new Error(`expected a result, got ${m.kind?.$case}`);
      const out = m.kind.value.output;
      if (e === n) {
        if (out?.$case !== 'token') throw new Error('expected a token');
        expect(out.value).toBe(greedyToken(want[n - 1], client.manifest.config.vocabSize));
        return out.value;
      }
      if (out?.$case !== 'tensor') throw new Error('expected a tensor');
      x = fromWireTensor(out.value, 'result');
      expectClose(x, want[e - 1], e - 1, `server ${placement}`);
    }
    b = e;
  }
  return greedyToken(x as Float32Tensor, client.manifest.config.vocabSize);
}

/** Moves every stage that changes side between `prefill` and `decode`; `held` is the prompt's length. */
async function handOver(d: Driven, cache: KvCache, prefill: string, decode: string, held: number, h: Handover): Promise<void> {
  for (let s = 0; s < n; s++) {
    if (prefill[s] === decode[s]) continue;
    const stateful = kinds[s] === 'embed' || kinds[s] === 'attn';
    if (decode[s] === 'C') {
      d.s.kvTake(++d.seq, s, h.takeBytes ?? 0);
      const chunks = await d.chunks();
      expect(chunks.reduce((a, c) => a + c.tokens, 0)).toBe(held);
      for (const c of chunks) {
        expect(c.seq).toBe(String(d.seq));
        if (!stateful) continue;
        const kv = kinds[s] === 'attn' ? { key: fromWireTensor(c.key, 'key') as Float32Tensor, value: fromWireTensor(c.value, 'value') as Float32Tensor } : {};
        client.appendState(s, cache, { tokens: c.tokens, ...kv });
      }
    } else if (!stateful) {
      d.s.kvPut(s, 0, held);
    } else {
      const st = client.exportState(s, cache);
      expect(st.tokens).toBe(held);
      client.dropState(s, cache);
      const step = h.putTokens ?? held;
      for (let o = 0; o < held; o += step) {
        const to = Math.min(held, o + step);
        if (kinds[s] === 'embed') d.s.kvPut(s, o, to - o);
        else d.s.kvPut(s, o, to - o, slicePositions(st.key as Float32Tensor, o, to), slicePositions(st.value as Float32Tensor, o, to));
      }
    }
  }
}

/** A whole phased generation on `e`: the tokens, in order (the first from the prefill). */
async function phased(e: TestExecutor, prompt: number[], prefill: string, decode: string, h: Handover = {}): Promise<number[]> {
  const d = new Driven(e.session());
  await d.open();
  const cache = client.newCache();
  const ref = client.newCache();
  try {
    const tokens = [await pass(d, cache, ref, prefill, ids(...prompt))];
    await handOver(d, cache, prefill, decode, prompt.length, h);
    if (decode === 'S'.repeat(n)) {
      d.s.generate(++d.seq, ids(tokens[0]), NEW_TOKENS - 1);
      for (let i = 0; i < NEW_TOKENS - 1; i++) {
        const m = await d.answer();
        if (m.kind?.$case !== 'token') throw new Error(`expected a token, got ${m.kind?.$case}`);
        expect(m.kind.value.index).toBe(i);
        tokens.push(m.kind.value.token);
      }
    } else {
      while (tokens.length < NEW_TOKENS) tokens.push(await pass(d, cache, ref, decode, ids(tokens[tokens.length - 1])));
    }
    d.s.call.end();
    expect((await d.s.ended).code).toBe(grpc.status.OK);
    return tokens;
  } finally {
    cache.clear();
    ref.clear();
  }
}

describe('phased plans: stage state handed over on the session stream (kv_put, kv_take)', () => {
  let model: TempModel;
  const expected = new Map<number[], number[]>();
  const execs: Record<string, TestExecutor> = {};

  beforeAll(async () => {
    model = await makeTempModel();
    const tokens = await loadClient(model, PROMPTS);
    PROMPTS.forEach((p, i) => expected.set(p, tokens[i]));
    const inline = (): Promise<StageEngine> => OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    const worker = (): Promise<StageEngine> => WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    execs['inline, batching'] = await startTestExecutor(await inline(), { serverId: 'ho-inline-b', batching: true });
    execs['inline, no batching'] = await startTestExecutor(await inline(), { serverId: 'ho-inline', batching: false });
    execs['worker, batching'] = await startTestExecutor(await worker(), { serverId: 'ho-worker-b', batching: true });
    execs['worker, no batching'] = await startTestExecutor(await worker(), { serverId: 'ho-worker', batching: false, maxContextTokens: 64 });
  });

  afterEach(async () => {
    await Promise.all(Object.values(execs).map((e) => e.cancelSessions(3000)));
  });

  afterAll(async () => {
    for (const e of Object.values(execs)) await e.stop();
    await client?.close();
    model?.remove();
  });

  it.each(['inline, batching', 'inline, no batching', 'worker, batching', 'worker, no batching'])(
    'every (prefill, decode) pair gives the one-process tokens, all sessions at once (%s)',
    async (name) => {
      const e = execs[name];
      const runs = PAIRS.flatMap(([pre, dec]) => PROMPTS.map((p) => ({ pre, dec, p })));
      const got = await Promise.all(runs.map((r) => phased(e, r.p, r.pre, r.dec)));
      runs.forEach((r, i) =>
        expect({ pair: `${r.pre}->${r.dec}`, prompt: r.p, tokens: got[i] }).toEqual({ pair: `${r.pre}->${r.dec}`, prompt: r.p, tokens: expected.get(r.p) }),
      );
      // With batching on, the sessions' steps did share stage calls.
      if (!name.includes('no batching')) expect(Number((await e.status()).batchedSteps)).toBeGreaterThan(0);
      // Every session ended: every byte of KV (steps, puts, generate) given back, takes included.
      await eventually(async () => e.server.kvBytes().used === 0, { timeoutMs: 3000, what: 'KV bytes given back' });
    },
    60_000,
  );

  it('chunks: a kv_take cut by max_chunk_bytes and kv_puts of a few positions each give the same tokens', async () => {
    const e = execs['worker, batching'];
    const p = PROMPTS[0];
    // 3 positions per taken chunk (1536 bytes of key plus value), 2 per put chunk.
    for (const [pre, dec] of [
      ['SSSSSS', 'CCCCCC'],
      ['CCCCCC', 'SSSSSS'],
      ['CSSCCC', 'CCCSSC'],
    ]) {
      expect(await phased(e, p, pre, dec, { putTokens: 2, takeBytes: 3 * KV_BYTES_PER_POSITION })).toEqual(expected.get(p));
    }
    // The chunks themselves: in order, whole positions, the last flagged, shapes [1, 4, T, 16].
    const d = new Driven(e.session());
    await d.open();
    d.s.step(1, 0, n, ids(...p), true);
    await d.answer();
    d.s.kvTake(2, 1, 3 * KV_BYTES_PER_POSITION + 100);
    const chunks = await d.chunks();
    expect(chunks.map((c) => [c.offset, c.tokens, c.last])).toEqual([
      [0, 3, false],
      [3, 3, false],
      [6, 3, true],
    ]);
    expect(chunks.map((c) => c.key?.shape)).toEqual([
      [1, 4, 3, 16],
      [1, 4, 3, 16],
      [1, 4, 3, 16],
    ]);
    // Smaller than one position: one position per chunk. A non-attention stage: one chunk, no tensors.
    d.s.kvTake(3, 3, 1);
    expect((await d.chunks()).map((c) => c.tokens)).toEqual(new Array<number>(p.length).fill(1));
    d.s.kvTake(4, 2, 1);
    const mlp = await d.chunks();
    expect(mlp.map((c) => [c.offset, c.tokens, c.last, c.key, c.value])).toEqual([[0, p.length, true, undefined, undefined]]);
    // 0 means 1 MiB: the whole stage in one chunk.
    d.s.kvTake(5, 0, 0);
    expect((await d.chunks()).map((c) => [c.tokens, c.last])).toEqual([[p.length, true]]);
    // The taken stages hold nothing now: taking one again is refused, naming the field.
    d.s.kvTake(6, 1, 0);
    expectRefusal(await d.s.ended, grpc.status.FAILED_PRECONDITION, 'kv_take.stage 1 must hold at least one token');
  });

  it('a kv_take answers after the step sent before it, in order', async () => {
    const e = execs['inline, batching'];
    const d = new Driven(e.session());
    await d.open();
    d.s.step(1, 0, 2, ids(...PROMPTS[1]));
    d.s.kvTake(2, 1, 0);
    d.s.kvTake(3, 0, 0);
    const first = await d.answer();
    expect(first.kind?.$case === 'result' && first.kind.value.seq).toBe('1');
    const attn = await d.chunks();
    const embed = await d.chunks();
    expect(attn.map((c) => [c.seq, c.stage, c.tokens])).toEqual([['2', 1, 3]]);
    expect(embed.map((c) => [c.seq, c.stage, c.tokens, c.key])).toEqual([['3', 0, 3, undefined]]);
    d.s.call.end();
    expect((await d.s.ended).code).toBe(grpc.status.OK);
  });
});

describe('kv_put and kv_take refuse what breaks the rules, naming the field, and the executor serves on', () => {
  let model: TempModel;
  let e: TestExecutor;
  let small: TestExecutor;
  let want: number[];
  const H = 4;
  const HD = 16;
  const kv = (tokens: number, fill = 0.25): HostTensor => ({ dtype: 'float32', shape: [1, H, tokens, HD], data: new Float32Array(H * tokens * HD).fill(fill) });
  const PROMPT = PROMPTS[1];

  beforeAll(async () => {
    model = await makeTempModel();
    [want] = await loadClient(model, [PROMPT]);
    e = await startTestExecutor(await WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1 }), { serverId: 'ho-bad', maxContextTokens: 64 });
    // Room for 8 positions of one attention stage (4 KiB); a session is admitted with room for one token (1 KiB).
    small = await startTestExecutor(await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 }), {
      serverId: 'ho-kv',
      maxKvBytes: 8 * KV_BYTES_PER_POSITION,
    });
  });

  afterEach(async () => {
    await Promise.all([e.cancelSessions(3000), small.cancelSessions(3000)]);
  });

  afterAll(async () => {
    await e?.stop();
    await small?.stop();
    await client?.close();
    model?.remove();
  });

  const { INVALID_ARGUMENT: INVALID, FAILED_PRECONDITION: PRECONDITION } = grpc.status;
  const opened = (s: TestSession, isPrivate = false): void => s.open('', 't', isPrivate);
  type Case = [label: string, send: (s: TestSession) => void, code: grpc.status, message: string];
  /** What a session sends after a plain open, refused with the code and a message holding the text. */
  const afterOpen: Case[] = [
    ['key of int64', (s) => s.kvPut(1, 0, 1, ids(1, 2, 3, 4), kv(1)), INVALID, 'kv_put.key.dtype must be DATA_TYPE_FLOAT32, given DATA_TYPE_INT64'],
    [
      'key of the wrong shape',
      (s) => s.kvPut(1, 0, 3, kv(2), kv(3)),
      INVALID,
      'kv_put.key.shape must be [1, 4, 3, 16] ([1, n_head, tokens, head_dim] of the served model), given [1, 4, 2, 16]',
    ],
    [
      'value of the wrong head count',
      (s) => s.kvPut(1, 0, 1, kv(1), { dtype: 'float32', shape: [1, 2, 1, 32], data: new Float32Array(64) }),
      INVALID,
      'kv_put.value.shape must be [1, 4, 1, 16]',
    ],
    [
      'a NaN in the values',
      (s) => s.kvPut(1, 0, 2, kv(2), kv(2, Number.NaN)),
      INVALID,
      'kv_put.value must hold finite float32 values (no NaN or ±Infinity), given NaN at index 0',
    ],
    [
      'an Infinity in the keys',
      (s) => s.kvPut(1, 0, 1, kv(1, Infinity), kv(1)),
      INVALID,
      'kv_put.key must hold finite float32 values (no NaN or ±Infinity), given Infinity at index 0',
    ],
    ['an attention stage without keys', (s) => s.kvPut(1, 0, 1, undefined, kv(1)), INVALID, 'kv_put.key is required for attention stage 1, given nothing'],
    [
      'an MLP stage with tensors',
      (s) => s.kvPut(2, 0, 1, kv(1), kv(1)),
      INVALID,
      'kv_put.key must be absent for stage 2 (mlp: its state is its token count), given a tensor',
    ],
    [
      'the embed stage with values',
      (s) => s.kvPut(0, 0, 1, undefined, kv(1)),
      INVALID,
      'kv_put.value must be absent for stage 0 (embed: its state is its token count)',
    ],
    [
      'a first chunk at offset 1',
      (s) => s.kvPut(1, 1, 1, kv(1), kv(1)),
      PRECONDITION,
      'kv_put.offset must be 0 (the tokens stage 1 holds: chunks cover positions in order, without gaps), given 1',
    ],
    [
      'a gap between chunks',
      (s) => (s.kvPut(1, 0, 2, kv(2), kv(2)), s.kvPut(1, 3, 1, kv(1), kv(1))),
      PRECONDITION,
      'kv_put.offset must be 2 (the tokens stage 1 holds',
    ],
    ['a chunk sent twice', (s) => (s.kvPut(2, 0, 2), s.kvPut(2, 0, 2)), PRECONDITION, 'kv_put.offset must be 2'],
    ['tokens 0', (s) => s.kvPut(2, 0, 0), INVALID, 'kv_put.tokens must be >= 1, given 0'],
    [
      'past the context',
      (s) => s.kvPut(2, 0, 65),
      PRECONDITION,
      'kv_put would make stage 2 hold 65 tokens (offset 0 + tokens 65); the context must stay <= 64 tokens',
    ],
    ['a stage past the model', (s) => s.kvPut(6, 0, 1), INVALID, 'kv_put.stage must be in 0..5, given 6'],
    ['a take of a stage past the model', (s) => s.kvTake(1, 4294967295), INVALID, 'kv_take.stage must be in 0..5, given 4294967295'],
    [
      'a put to a stage holding tokens from a step',
      (s) => (s.step(1, 0, 6, ids(...PROMPT), true), s.kvPut(1, 3, 1, kv(1), kv(1))),
      PRECONDITION,
      "kv_put.stage 1 holds 3 tokens this session computed on the server; a stage's state may be put only into a stage holding none",
    ],
    ['a take of an empty stage', (s) => s.kvTake(1, 3), PRECONDITION, 'kv_take.stage 3 must hold at least one token on the server (it holds none'],
    [
      'a take whose seq does not increase',
      (s) => (s.step(5, 0, 2, ids(1)), s.kvTake(5, 1)),
      INVALID,
      "kv_take.seq must increase within a session together with the steps' (last 5), given 5",
    ],
    [
      'a put after generate',
      (s) => (s.generate(1, ids(1), 60), s.kvPut(2, 0, 1)),
      PRECONDITION,
      'kv_put may not follow generate (the server decodes this session), given kv_put of stage 2',
    ],
    ['a take after generate', (s) => (s.generate(1, ids(1), 60), s.kvTake(2, 1)), PRECONDITION, 'kv_take may not follow generate'],
    ['a step after a put (a stage put into, the next not)', (s) => (s.kvPut(0, 0, 2), s.step(1, 0, 2, ids(1))), PRECONDITION, 'step.stage_end must be 1'],
    [
      'generate after puts that left a stage empty',
      (s) => (s.kvPut(0, 0, 2), s.kvPut(1, 0, 2, kv(2), kv(2)), s.generate(1, ids(1), 2)),
      PRECONDITION,
      'generate must be the first message after open, or continue a handed-over prefill in which every stage holds the same number N >= 1 of tokens; given stage 2 holding 0',
    ],
    [
      'generate after a handed-over prefill past the context',
      (s) => {
        for (let st = 0; st < 6; st++) {
          if (st === 1 || st === 3) s.kvPut(st, 0, 60, kv(60), kv(60));
          else s.kvPut(st, 0, 60);
        }
        s.generate(1, ids(1), 6);
      },
      PRECONDITION,
      'generate would make the session hold 66 tokens (60 handed over + input 1 + max_new_tokens 6 - 1); the context must stay <= 64 tokens',
    ],
  ];
  const cases: Case[] = [
    ...afterOpen.map(([label, send, code, message]): Case => [label, (s) => (opened(s), send(s)), code, message]),
    [
      'a put of the embed stage in a private session',
      (s) => (opened(s, true), s.kvPut(0, 0, 1)),
      PRECONDITION,
      'kv_put.stage must be in 1..4 in a private session (open.private',
    ],
    [
      'a take of the head in a private session',
      (s) => (opened(s, true), s.kvTake(1, 5)),
      PRECONDITION,
      'kv_take.stage must be in 1..4 in a private session (open.private',
    ],
    ['a put before open', (s) => s.kvPut(1, 0, 1, kv(1), kv(1)), PRECONDITION, 'the first message must be open, given kv_put'],
  ];

  it.each(cases)('%s', async (_label, send, code, message) => {
    const s = e.session();
    const healthy = phased(e, PROMPT, 'CSSSSC', 'CCCSSC');
    send(s);
    expectRefusal(await s.ended, code, message);
    expect(await healthy).toEqual(want);
  });

  it('a put over the KV budget is refused with RESOURCE_EXHAUSTED; a take gives its bytes back', async () => {
    const a = small.session();
    a.open();
    await a.next(1);
    a.kvPut(1, 0, 8, kv(8), kv(8));
    await eventually(async () => small.server.kvBytes().used === 8 * KV_BYTES_PER_POSITION, { timeoutMs: 3000, what: 'the put reserved' });
    // Full: a new session is not admitted (it needs room for one token).
    const b = small.session();
    b.open();
    expectRefusal(await b.ended, grpc.status.RESOURCE_EXHAUSTED, 'EXECUTOR_MAX_KV_BYTES');
    // The take gives the bytes back, and the next put over the budget is refused naming it.
    a.kvTake(1, 1);
    const chunk = await a.next(2);
    expect(chunk.kind?.$case === 'kvChunk' && chunk.kind.value.tokens).toBe(8);
    expect(small.server.kvBytes().used).toBe(0);
    a.kvPut(3, 0, 9, kv(9), kv(9));
    expectRefusal(await a.ended, grpc.status.RESOURCE_EXHAUSTED, 'kv_put of stage 3 needs 4608 bytes more');
    await eventually(async () => small.server.kvBytes().used === 0, { timeoutMs: 3000, what: 'KV bytes given back' });
  });
});
