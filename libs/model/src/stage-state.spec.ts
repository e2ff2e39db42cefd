import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { HostTensor } from '@tandem/protocol';
import { createModel } from './create';
import { StageInputError } from './errors';
import { greedyToken } from './pipeline';
import { StageRunner, type KvCache } from './runner';
import { kvChunkTokens, kvConcat, kvSlice, type Float32Tensor } from './stage-state';

let root: string;
let dir: string;
const PROMPT = [15496, 11, 995, 318, 257];

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'model-stage-state-'));
  dir = path.join(root, 'tiny');
  await createModel({ preset: 'tiny', seed: 7, out: dir });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const ids = (xs: readonly number[]): HostTensor => ({ dtype: 'int64', shape: [1, xs.length], data: BigInt64Array.from(xs, (v) => BigInt(v)) });

/** Runs every stage of `runner` over `xs` on `cache` and returns the greedy token. */
async function pass(runner: StageRunner, cache: KvCache, xs: readonly number[]): Promise<number> {
  let x: HostTensor = ids(xs);
  for (let s = 0; s < runner.manifest.stages.length; s++) x = await runner.run(s, x, cache);
  return greedyToken(x as { data: Float32Array }, runner.manifest.config.vocabSize);
}

describe('kvSlice / kvConcat / kvChunkTokens', () => {
  const H = 2;
  const T = 5;
  const hd = 3;
  // element (h, t, d) = 100 h + 10 t + d
  const kv: Float32Tensor = {
    dtype: 'float32',
    shape: [1, H, T, hd],
    data: Float32Array.from({ length: H * T * hd }, (_, i) => 100 * Math.floor(i / (T * hd)) + 10 * (Math.floor(i / hd) % T) + (i % hd)),
  };

  it('cuts whole positions of every head and joins them back to the original', () => {
    const a = kvSlice(kv, 0, 2);
    const b = kvSlice(kv, 2, 3);
    expect(a.shape).toEqual([1, H, 2, hd]);
    expect([...b.data.subarray(0, 3)]).toEqual([20, 21, 22]); // head 0, position 2
    expect([...b.data.subarray(9, 12)]).toEqual([120, 121, 122]); // head 1, position 2
    const back = kvConcat([a, b]);
    expect(back.shape).toEqual(kv.shape);
    expect([...back.data]).toEqual([...kv.data]);
    expect(kvConcat([kvSlice(kv, 0, 1), kvSlice(kv, 1, 1), kvSlice(kv, 2, 3)]).data).toEqual(kv.data);
  });

  it('refuses a range outside the positions held and parts of different heads', () => {
    expect(() => kvSlice(kv, 3, 3)).toThrow('range must be within the 5 positions held');
    expect(() => kvSlice(kv, 0, 0)).toThrow(StageInputError);
    expect(() => kvConcat([kv, { dtype: 'float32', shape: [1, 1, 1, hd], data: new Float32Array(hd) }])).toThrow('parts[1].shape must be [1, 2, T, 3]');
    expect(() => kvConcat([])).toThrow('parts must hold at least one tensor');
  });

  it('fits key plus value in the byte bound, at least one position', () => {
    expect(kvChunkTokens(12, 64, 1 << 20)).toBe(170); // 6144 bytes a position
    expect(kvChunkTokens(12, 64, 100)).toBe(1);
  });
});

describe('StageRunner state export and import', () => {
  it('moves every stage of a prefill to another runner, which decodes the same tokens as the one that prefilled', async () => {
    const a = await StageRunner.load(dir, { intraOpNumThreads: 1 });
    const b = await StageRunner.load(dir, { intraOpNumThreads: 1 });
    try {
      const S = a.manifest.stages.length;
      const ref = a.newCache();
      const expected = [await pass(a, ref, PROMPT)];
      for (let k = 0; k < 3; k++) expected.push(await pass(a, ref, [expected[k]]));

      const from = a.newCache();
      const first = await pass(a, from, PROMPT);
      const to = b.newCache();
      for (let s = 0; s < S; s++) {
        const st = a.exportState(s, from, { drop: true });
        const kind = a.manifest.stages[s].kind;
        expect(st.tokens).toBe(kind === 'embed' || kind === 'attn' ? PROMPT.length : 0);
        if (kind === 'attn') expect(st.key?.shape).toEqual([1, a.manifest.config.nHead, PROMPT.length, a.manifest.config.nEmbd / a.manifest.config.nHead]);
        b.importState(s, to, { ...st, tokens: PROMPT.length });
      }
      expect(from.embeddedTokens).toBe(0);
      expect(from.kvBytes).toBe(0);
      const got = [first];
      for (let k = 0; k < 3; k++) got.push(await pass(b, to, [got[k]]));
      expect(got).toEqual(expected);
      expect(to.embeddedTokens).toBe(PROMPT.length + 3);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('refuses a state that does not fit the stage and leaves the cache unchanged', async () => {
    const r = await StageRunner.load(dir, { intraOpNumThreads: 1 });
    try {
      const { nHead: H, nEmbd: D } = r.manifest.config;
      const attn = r.manifest.stages.findIndex((s) => s.kind === 'attn');
      const mlp = r.manifest.stages.findIndex((s) => s.kind === 'mlp');
      const c = r.newCache();
      const kv = (T: number, fill = 0.5): Float32Tensor => ({ dtype: 'float32', shape: [1, H, T, D / H], data: new Float32Array(H * T * (D / H)).fill(fill) });
      expect(() => r.importState(attn, c, { tokens: 2, key: kv(2) })).toThrow('state.value must be present');
      expect(() => r.importState(attn, c, { tokens: 2, key: kv(3), value: kv(2) })).toThrow(
        `state.key.shape must be [1, ${H}, 2, ${D / H}], given [1,${H},3,${D / H}]`,
      );
      expect(() => r.importState(attn, c, { tokens: 2, key: kv(2), value: kv(2, NaN) })).toThrow('state.value.data[0] must be finite, given null');
      expect(() => r.importState(mlp, c, { tokens: 2, key: kv(2) })).toThrow('state.key must be absent');
      expect(() => r.importState(0, c, { tokens: 0 })).toThrow('state.tokens must be an integer in 1..');
      expect(c.kvBytes).toBe(0);
      r.importState(attn, c, { tokens: 2, key: kv(2), value: kv(2) });
      expect(c.pastLength(attn)).toBe(2);
      r.importState(0, c, { tokens: 2 });
      expect(c.embeddedTokens).toBe(2);
      const again = (): void => r.importState(attn, c, { tokens: 2, key: kv(2), value: kv(2) });
      expect(again).toThrow('stage must hold no tokens in the cache before its state is imported');
      expect(() => r.importState(0, c, { tokens: 1 })).toThrow(expect.objectContaining({ kind: 'precondition' }));
      // a copy: the caller's arrays may change afterwards
      const k = kv(1, 1);
      const c2 = r.newCache();
      r.importState(attn, c2, { tokens: 1, key: k, value: kv(1) });
      k.data.fill(7);
      expect(r.exportState(attn, c2).key?.data[0]).toBe(1);
      expect(() => r.exportState(99, c2)).toThrow('stage must be a stage index');
    } finally {
      await r.close();
    }
  });
});
