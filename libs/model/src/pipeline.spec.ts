import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { HostTensor } from '@tandem/protocol';
import { maxAbsDiff } from '@tandem/testkit';
import { createModel } from './create';
import { StageInputError } from './errors';
import { StageRunner } from './index';
import { SplitPipeline, argmaxRow, sampledToken, tokenOfOutput } from './pipeline';
import { formatPlacement, parsePlacement } from './placement';

let root: string;
let dir: string;
const PROMPT = [15496, 11, 995, 318, 257, 1332, 286, 262];

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'model-pipeline-'));
  dir = path.join(root, 'tiny');
  await createModel({ preset: 'tiny', seed: 7, out: dir });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Seeded placements so the test is reproducible. */
function randomPlacements(n: number, count: number, seed: number): string[] {
  let s = seed;
  const out: string[] = [];
  for (let k = 0; k < count; k++) {
    let p = '';
    for (let i = 0; i < n; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      p += (s >>> 16) & 1 ? 'C' : 'S';
    }
    out.push(p);
  }
  return out;
}

async function withPipeline<T>(placement: string, fn: (p: SplitPipeline) => Promise<T>): Promise<T> {
  const p = await SplitPipeline.load(dir, placement);
  try {
    return await fn(p);
  } finally {
    await p.close();
  }
}

describe('split pipeline', () => {
  it('gives the all-server logits for every placement', async () => {
    const ref = await withPipeline('SSSSSS', (p) => p.forward(PROMPT));
    expect(ref.shape).toEqual([1, PROMPT.length, 50257]);
    const placements = ['CCCCCC', 'CSCSCS', 'SCSCSC', 'CCSSSC', 'SCCSSC', 'SSSSSC', 'CSSSSS', ...randomPlacements(6, 5, 42)];
    for (const placement of placements) {
      const got = await withPipeline(placement, (p) => p.forward(PROMPT));
      expect({ placement, diff: maxAbsDiff(got.data, ref.data) <= 1e-5 }).toEqual({ placement, diff: true });
    }
  });

  it('decodes with the KV cache like recomputing from scratch', async () => {
    for (const placement of ['SSSSSS', 'CSCSCS']) {
      await withPipeline(placement, async (p) => {
        const session = p.newCaches();
        const seq = [...PROMPT.slice(0, 3)];
        let logits = await p.step(session, seq);
        for (let k = 0; k < 6; k++) {
          const next = argmaxRow(logits.data, 50257, logits.shape[1] - 1);
          // Vary the context with a fixed token too, so positions other than the argmax chain are used.
          const tok = k % 2 ? next : PROMPT[3 + k];
          seq.push(tok);
          logits = await p.step(session, [tok]);
          const full = await p.forward(seq);
          const lastRow = full.data.subarray((seq.length - 1) * 50257, seq.length * 50257);
          expect(maxAbsDiff(logits.data, lastRow)).toBeLessThanOrEqual(1e-4);
        }
        expect(session.client?.embeddedTokens ?? session.server?.embeddedTokens).toBe(seq.length);
      });
    }
  });

  it('generates the same ids whatever the placement', async () => {
    const ref = await withPipeline('SSSSSS', (p) => p.generate(PROMPT.slice(0, 2), { maxNewTokens: 8 }));
    expect(ref).toHaveLength(8);
    const streamed: number[] = [];
    const got = await withPipeline('CCSSSC', (p) => p.generate(PROMPT.slice(0, 2), { maxNewTokens: 8, onToken: (id) => streamed.push(id) }));
    expect(got).toEqual(ref);
    expect(streamed).toEqual(ref);
  });

  it("keeps each side's state in its own cache", async () => {
    await withPipeline('CSSSSC', async (p) => {
      const s = p.newCaches();
      await p.step(s, PROMPT.slice(0, 4));
      await p.step(s, [PROMPT[4]]);
      expect(s.client?.embeddedTokens).toBe(5);
      expect(s.server?.embeddedTokens).toBe(0);
      expect(s.server?.pastLength(1)).toBe(5);
      expect(s.server?.pastLength(3)).toBe(5);
      expect(s.client?.pastLength(1)).toBe(0);
      expect(s.server?.kvBytes).toBe(2 * 2 * 5 * 64 * 4);
    });
  });

  it('refuses a prompt that does not fit the context', async () => {
    await withPipeline('SSSSSS', async (p) => {
      await expect(p.generate(new Array(1020).fill(1), { maxNewTokens: 8 })).rejects.toThrow(/maxNewTokens must fit the context/);
    });
  });
});

describe('StageRunner', () => {
  let runner: StageRunner;
  beforeAll(async () => {
    runner = await StageRunner.load(dir);
  });
  afterAll(() => runner.close());

  const ids = (xs: number[]): HostTensor => ({ dtype: 'int64', shape: [1, xs.length], data: BigInt64Array.from(xs.map(BigInt)) });
  const hidden = (T: number, seed: number): HostTensor => ({
    dtype: 'float32',
    shape: [1, T, 64],
    data: Float32Array.from({ length: T * 64 }, (_, i) => Math.sin(seed * 1000 + i)),
  });

  it('batches sessions with the same results as separate runs', async () => {
    const lens = [3, 1, 5];
    for (const stage of [0, 1, 2, 5]) {
      const kind = runner.manifest.stages[stage].kind;
      const inputs = lens.map((T, k) => (kind === 'embed' ? ids(PROMPT.slice(k, k + T)) : hidden(T, k)));
      // Give every cache some history first so positions and past lengths differ between sessions.
      const sepCaches = lens.map(() => runner.newCache());
      const batCaches = lens.map(() => runner.newCache());
      for (const [k, c] of [...sepCaches.entries(), ...batCaches.entries()]) {
        if (kind === 'embed') await runner.run(0, ids(PROMPT.slice(0, k + 1)), c);
        if (kind === 'attn') await runner.run(stage, hidden(k + 2, 9), c);
      }
      const separate: HostTensor[] = [];
      for (const [k, x] of inputs.entries()) separate.push(await runner.run(stage, x, sepCaches[k]));
      const batched = await runner.runBatch(stage, inputs, batCaches);
      for (const k of lens.keys()) {
        expect(batched[k].shape).toEqual(separate[k].shape);
        expect(maxAbsDiff(batched[k].data as Float32Array, separate[k].data as Float32Array)).toBeLessThanOrEqual(1e-6);
        expect(batCaches[k].embeddedTokens).toBe(sepCaches[k].embeddedTokens);
        expect(batCaches[k].pastLength(stage)).toBe(sepCaches[k].pastLength(stage));
      }
    }
  });

  it('runs inputs that are views at an offset into a larger buffer (as tensors decoded in place from the wire)', async () => {
    for (const [stage, x] of [
      [0, ids(PROMPT)],
      [1, hidden(4, 2)],
      [2, hidden(4, 3)],
    ] as const) {
      const width = x.data.length;
      const backing = x.dtype === 'int64' ? new BigInt64Array(width + 3) : new Float32Array(width + 5);
      const at = backing.length - width;
      (backing as Float32Array).set(x.data as Float32Array, at);
      const view = { ...x, data: backing.subarray(at) } as HostTensor;
      const a = await runner.run(stage, x, runner.newCache());
      const b = await runner.run(stage, view, runner.newCache());
      expect(view.data.byteOffset).toBeGreaterThan(0);
      expect(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength).equals(Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength))).toBe(
        true,
      );
    }
  });

  it('names the field, the rule and the value of a refused input, leaving the cache unchanged', async () => {
    const cache = runner.newCache();
    await runner.run(0, ids([1, 2]), cache);
    const cases: [() => Promise<unknown>, RegExp, string][] = [
      [() => runner.run(0, hidden(1, 0), cache), /^input\.dtype must be 'int64' for stage embed, given 'float32'$/, 'invalid'],
      [() => runner.run(0, ids([1, 50257]), cache), /^input\.data\[1\] must be a token id in 0\.\.50256, given 50257$/, 'invalid'],
      [
        () => runner.run(2, hidden(2, 0), cache).then(() => runner.run(2, { dtype: 'float32', shape: [1, 2, 32], data: new Float32Array(64) }, cache)),
        /^input\.shape must be \[1, T, 64\]/,
        'invalid',
      ],
      [
        () => runner.run(1, { dtype: 'float32', shape: [1, 2, 64], data: new Float32Array(3) }, cache),
        /^input\.data must be a Float32Array of 128 values/,
        'invalid',
      ],
      [() => runner.run(9, hidden(1, 0), cache), /^stage must be a stage index in 0\.\.5, given 9$/, 'invalid'],
      [
        () => runner.run(0, ids(new Array(1023).fill(1)), cache),
        /^input\.shape\[1\] must keep the context within nPositions = 1024 \(2 tokens already/,
        'precondition',
      ],
      [() => runner.runBatch(0, [ids([1]), ids([2])], [cache, cache]), /^caches must be distinct/, 'invalid'],
    ];
    for (const [call, message, kind] of cases) {
      const err = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StageInputError);
      expect((err as Error).message).toMatch(message);
      expect((err as StageInputError).kind).toBe(kind);
    }
    expect(cache.embeddedTokens).toBe(2);
    const other = await StageRunner.load(dir, { stages: [0] });
    try {
      await expect(other.run(1, hidden(1, 0), other.newCache())).rejects.toMatchObject({ name: 'StageInputError', field: 'stage', kind: 'precondition' });
      await expect(other.run(0, ids([1]), cache)).rejects.toMatchObject({ field: 'cache' });
      expect([...other.stages]).toEqual([0]);
    } finally {
      await other.close();
    }
  });

  it('refuses attention past the context length', async () => {
    const cache = runner.newCache();
    await runner.run(1, hidden(1000, 1), cache);
    await expect(runner.run(1, hidden(25, 2), cache)).rejects.toMatchObject({ field: 'input.shape[1]', kind: 'precondition' });
    expect(cache.pastLength(1)).toBe(1000);
    cache.clear();
    expect(cache.pastLength(1)).toBe(0);
  });
});

describe('parsePlacement', () => {
  it('parses C/S strings and refuses other lengths and letters', () => {
    expect(parsePlacement('CSSC', 4)).toEqual(['client', 'server', 'server', 'client']);
    expect(formatPlacement(parsePlacement('CSSC', 4))).toBe('CSSC');
    expect(() => parsePlacement('CSS', 4)).toThrow("placement must have one C/S character per stage (4 characters), given 'CSS'");
    expect(() => parsePlacement('CSxC', 4)).toThrow(/placement must contain only 'C' \(client\) and 'S' \(server\); character 2 is 'x'/);
  });
});

describe('sampledToken', () => {
  it("returns the last row's greedy token as int64 [1, 1] and frees the logits' memory at once", () => {
    const logits: HostTensor = { dtype: 'float32', shape: [1, 2, 4], data: Float32Array.of(9, 0, 0, 0, 0, 1, 3, 2) };
    const token = sampledToken(logits, 4);
    expect(token).toEqual({ dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(2n) });
    expect(logits.data.byteLength).toBe(0); // detached: no collection needed to free it
    expect(tokenOfOutput(token, 4)).toBe(2);
    expect(tokenOfOutput({ dtype: 'float32', shape: [1, 1, 4], data: Float32Array.of(0, 5, 1, 1) }, 4)).toBe(1);
  });

  it('leaves a view into a larger buffer to the collector, and refuses a non-float output', () => {
    const whole = new Float32Array(8).fill(1);
    const view: HostTensor = { dtype: 'float32', shape: [1, 1, 4], data: whole.subarray(4) };
    view.data[1] = 2;
    expect(Number(sampledToken(view, 4).data[0])).toBe(1);
    expect(whole.byteLength).toBe(32);
    expect(() => sampledToken({ dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(1n) }, 4)).toThrow(/must be float32 logits, given int64/);
  });
});
