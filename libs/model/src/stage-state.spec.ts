import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { HostTensor } from '@tandem/protocol';
import { createModel } from './create';
import { StageInputError } from './errors';
import { greedyToken } from './pipeline';
import { StageRunner, type KvCache } from './runner';
import { concatPositions, slicePositions, type Float32Tensor } from './stage-state';

let root: string;
let dir: string;
let a: StageRunner;
let b: StageRunner;
const PROMPT = [15496, 11, 995, 318, 257];
const ids = (v: readonly number[]): HostTensor => ({ dtype: 'int64', shape: [1, v.length], data: BigInt64Array.from(v, (x) => BigInt(x)) });

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'model-state-'));
  dir = path.join(root, 'tiny');
  await createModel({ preset: 'tiny', seed: 11, out: dir });
  a = await StageRunner.load(dir, { intraOpNumThreads: 1 });
  b = await StageRunner.load(dir, { intraOpNumThreads: 1 });
});
afterAll(async () => {
  await a?.close();
  await b?.close();
  rmSync(root, { recursive: true, force: true });
});

/** Greedy tokens continuing from `first` for `n` steps through every stage of `r` on `cache`. */
async function decode(r: StageRunner, cache: KvCache, first: number, n: number): Promise<{ tokens: number[]; logits: Float32Array[] }> {
  const tokens: number[] = [];
  const logits: Float32Array[] = [];
  let next = first;
  for (let i = 0; i < n; i++) {
    const out = (await r.runRange(0, r.manifest.stages.length, ids([next]), cache, { lastOnly: true })) as Float32Tensor;
    logits.push(out.data);
    next = greedyToken(out, r.manifest.config.vocabSize);
    tokens.push(next);
  }
  return { tokens, logits };
}

describe("StageRunner frees a cache's replaced keys and values at once", () => {
  /** The buffers of stage `stage`'s keys and values in `cache` now (the runner's own, read through its internals). */
  const kvBuffers = (cache: KvCache, stage: number): ArrayBufferLike[] => {
    const kv = (cache as unknown as { kv: Map<number, { key: { data: Float32Array }; value: { data: Float32Array } }> }).kv.get(stage);
    if (!kv) throw new Error(`stage ${stage} holds nothing`);
    return [kv.key.data.buffer, kv.value.data.buffer];
  };

  it('detaches the pasts a decode step replaced, and what dropState drops, while exported state stays whole', async () => {
    const attn = a.manifest.stages.find((s) => s.kind === 'attn')?.index ?? -1;
    const cache = a.newCache();
    const prefill = (await a.runRange(0, a.manifest.stages.length, ids(PROMPT), cache, { lastOnly: true })) as Float32Tensor;
    const before = kvBuffers(cache, attn);
    expect(before.every((b) => b.byteLength > 0)).toBe(true);
    // One stage-by-stage decode step: the pasts it replaced are freed, the presents are live.
    let x: HostTensor = ids([greedyToken(prefill, a.manifest.config.vocabSize)]);
    for (let s = 0; s < a.manifest.stages.length; s++) x = await a.run(s, x, cache);
    expect(before.map((b) => b.byteLength)).toEqual([0, 0]);
    const live = kvBuffers(cache, attn);
    expect(live.every((b) => b.byteLength > 0)).toBe(true);
    expect(cache.pastLength(attn)).toBe(PROMPT.length + 1);
    const exported = a.exportState(attn, cache);
    a.dropState(attn, cache);
    expect(live.map((b) => b.byteLength)).toEqual([0, 0]);
    expect(exported.key?.data.length).toBe(a.manifest.config.nEmbd * (PROMPT.length + 1));
    expect(exported.key?.data.buffer.byteLength).toBeGreaterThan(0);
  });
});

describe('StageRunner state hand-over (exportState / appendState / dropState)', () => {
  it('a cache rebuilt from exported state, in chunks, continues bit for bit like the original', async () => {
    const n = a.manifest.stages.length;
    const src = a.newCache();
    const prefill = (await a.runRange(0, n, ids(PROMPT), src, { lastOnly: true })) as Float32Tensor;
    const first = greedyToken(prefill, a.manifest.config.vocabSize);
    const dst = b.newCache();
    for (const s of a.manifest.stages) {
      if (s.kind !== 'embed' && s.kind !== 'attn') continue;
      const st = a.exportState(s.index, src);
      expect(st.tokens).toBe(PROMPT.length);
      if (s.kind === 'embed') {
        b.appendState(s.index, dst, st);
        continue;
      }
      expect(st.key?.shape).toEqual([1, a.manifest.config.nHead, PROMPT.length, a.manifest.config.nEmbd / a.manifest.config.nHead]);
      // Chunks of 2 positions, appended in order.
      for (let o = 0; o < st.tokens; o += 2) {
        const to = Math.min(st.tokens, o + 2);
        b.appendState(s.index, dst, {
          tokens: to - o,
          key: slicePositions(st.key as Float32Tensor, o, to),
          value: slicePositions(st.value as Float32Tensor, o, to),
        });
      }
      expect(dst.pastLength(s.index)).toBe(PROMPT.length);
    }
    expect(dst.embeddedTokens).toBe(PROMPT.length);
    const want = await decode(a, src, first, 6);
    const got = await decode(b, dst, first, 6);
    expect(got.tokens).toEqual(want.tokens);
    got.logits.forEach((l, i) =>
      expect(
        Buffer.from(l.buffer, l.byteOffset, l.byteLength).equals(Buffer.from(want.logits[i].buffer, want.logits[i].byteOffset, want.logits[i].byteLength)),
      ).toBe(true),
    );
    // dropState: the stage holds nothing afterwards.
    a.dropState(1, src);
    a.dropState(0, src);
    expect(src.pastLength(1)).toBe(0);
    expect(src.embeddedTokens).toBe(0);
    expect(a.exportState(1, src).tokens).toBe(0);
    src.clear();
    dst.clear();
  });

  it('slicePositions and concatPositions are inverses', () => {
    const t: Float32Tensor = { dtype: 'float32', shape: [1, 2, 5, 3], data: Float32Array.from({ length: 30 }, (_, i) => i) };
    const parts = [slicePositions(t, 0, 2), slicePositions(t, 2, 3), slicePositions(t, 3, 5)];
    expect(parts.map((p) => p.shape[2])).toEqual([2, 1, 2]);
    expect(Array.from(parts[1].data)).toEqual([6, 7, 8, 21, 22, 23]);
    const back = concatPositions(parts);
    expect(back.shape).toEqual([1, 2, 5, 3]);
    expect(Array.from(back.data)).toEqual(Array.from(t.data));
    expect(() => slicePositions(t, 3, 6)).toThrow('to must be an integer in 3..5, given 6');
  });

  it('refuses state it cannot take, naming the field, and leaves the cache unchanged', () => {
    const { nHead: H, nEmbd: D } = a.manifest.config;
    const c = a.newCache();
    const kv = (t: number): Float32Tensor => ({ dtype: 'float32', shape: [1, H, t, D / H], data: new Float32Array(H * t * (D / H)) });
    expect(() => a.appendState(2, c, { tokens: 1 })).toThrow(StageInputError);
    expect(() => a.appendState(2, c, { tokens: 1 })).toThrow('stage must be an embed or attention stage');
    expect(() => a.appendState(1, c, { tokens: 0, key: kv(0), value: kv(0) })).toThrow('state.tokens must be an integer >= 1, given 0');
    expect(() => a.appendState(1, c, { tokens: 2, key: kv(1), value: kv(2) })).toThrow(`state.key.shape must be [1, ${H}, 2, ${D / H}]`);
    expect(() => a.appendState(1, c, { tokens: 1, key: kv(1) })).toThrow('state.value must be present for attention stage');
    expect(() => a.appendState(0, c, { tokens: 1, key: kv(1) })).toThrow('state.key must be absent for stage embed');
    expect(() => a.appendState(0, c, { tokens: a.manifest.config.nPositions + 1 })).toThrow('keep the context within nPositions');
    expect(() => a.exportState(0, b.newCache())).toThrow("cache must come from this runner's newCache()");
    expect(c.embeddedTokens).toBe(0);
    expect(c.pastLength(1)).toBe(0);
  });
});
