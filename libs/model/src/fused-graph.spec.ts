import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { HostTensor } from '@tandem/protocol';
import { createModel } from './create';
import { ModelOptionError, StageInputError } from './errors';
import { FUSED_IO, buildFusedGraph, fusedSessionConfig } from './fused-graph';
import { StageRunner, readManifest } from './index';

let root: string;
let dir: string;
const PROMPT = [15496, 11, 995, 318, 257, 1332, 286, 262];
const V = 50257;
const N = 6; // tiny: embed, 2 × (attn, mlp), head

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'model-fused-'));
  dir = path.join(root, 'tiny');
  await createModel({ preset: 'tiny', seed: 3, out: dir });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const ids = (xs: readonly number[]): HostTensor => ({ dtype: 'int64', shape: [1, xs.length], data: BigInt64Array.from(xs, BigInt) });
const same = (a: HostTensor, b: HostTensor): boolean =>
  a.shape.join() === b.shape.join() &&
  Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength));
const argmaxLast = (l: HostTensor): number => {
  const d = l.data as Float32Array;
  const base = d.length - V;
  let best = 0;
  for (let j = 1; j < V; j++) if (d[base + j] > d[base + best]) best = j;
  return best;
};

describe('fused stage ranges', () => {
  it('one monolithic ONNX session of the whole model gives the stage-by-stage logits bit for bit', async () => {
    const manifest = await readManifest(dir);
    const session = await ort.InferenceSession.create(await buildFusedGraph(dir, manifest, 0, N), { extra: { session: fusedSessionConfig(dir) } });
    try {
      expect(session.inputNames).toEqual([
        'input_ids',
        'position_ids',
        FUSED_IO.pastKey(1),
        FUSED_IO.pastValue(1),
        FUSED_IO.pastKey(3),
        FUSED_IO.pastValue(3),
        FUSED_IO.headStart,
      ]);
      const { nHead: H, nEmbd: D } = manifest.config;
      const empty = new ort.Tensor('float32', new Float32Array(0), [1, H, 0, D / H]);
      const r = await session.run({
        input_ids: new ort.Tensor('int64', BigInt64Array.from(PROMPT, BigInt), [1, PROMPT.length]),
        position_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from(PROMPT, (_, i) => BigInt(i)),
          [1, PROMPT.length],
        ),
        [FUSED_IO.pastKey(1)]: empty,
        [FUSED_IO.pastValue(1)]: empty,
        [FUSED_IO.pastKey(3)]: empty,
        [FUSED_IO.pastValue(3)]: empty,
        [FUSED_IO.headStart]: new ort.Tensor('int64', BigInt64Array.of(0n), [1]),
      });
      const staged = await StageRunner.load(dir);
      try {
        const cache = staged.newCache();
        let x = ids(PROMPT);
        for (let s = 0; s < N; s++) x = await staged.run(s, x, cache);
        expect(r.logits.dims).toEqual([1, PROMPT.length, V]);
        expect(same({ dtype: 'float32', shape: [...r.logits.dims], data: r.logits.data as Float32Array }, x)).toBe(true);
        expect(r[FUSED_IO.presentKey(3)].dims).toEqual([1, H, PROMPT.length, D / H]);
      } finally {
        await staged.close();
      }
    } finally {
      await session.release();
    }
  });

  it('runRange decodes bit for bit like per-stage runs, fused or not, and mixes with single-stage steps on one cache', async () => {
    const fused = await StageRunner.load(dir, {
      fusedRanges: [
        [0, N],
        [1, 3],
      ],
    });
    const plain = await StageRunner.load(dir);
    try {
      expect(fused.hasFusedRange(0, N)).toBe(true);
      expect(plain.hasFusedRange(0, N)).toBe(false);
      const a = fused.newCache();
      const b = plain.newCache();
      let la = await fused.runRange(0, N, ids(PROMPT), a, { lastOnly: true });
      let lb = await plain.runRange(0, N, ids(PROMPT), b, { lastOnly: true });
      expect(la.shape).toEqual([1, 1, V]);
      expect(same(la, lb)).toBe(true);
      for (let k = 0; k < 6; k++) {
        const tok = argmaxLast(la);
        if (k === 3) {
          // One step stage by stage on the fused runner's cache, with the fused [1,3) in the middle.
          let x = await fused.run(0, ids([tok]), a);
          x = await fused.runRange(1, 3, x, a);
          for (let s = 3; s < N; s++) x = await fused.run(s, x, a);
          la = x;
        } else {
          la = await fused.runRange(0, N, ids([tok]), a, { lastOnly: true });
        }
        lb = await plain.runRange(0, N, ids([tok]), b, { lastOnly: true });
        expect({ k, same: same(la, lb) }).toEqual({ k, same: true });
      }
      expect(a.embeddedTokens).toBe(PROMPT.length + 6);
      expect(a.pastLength(1)).toBe(PROMPT.length + 6);
      expect(a.pastLength(3)).toBe(PROMPT.length + 6);
      expect(a.kvBytes).toBe(b.kvBytes);
      // All logits of a prefill through the fused range equal the per-stage ones too.
      const all = await fused.runRange(0, N, ids(PROMPT), fused.newCache());
      const allPlain = await plain.runRange(0, N, ids(PROMPT), plain.newCache());
      expect(all.shape).toEqual([1, PROMPT.length, V]);
      expect(same(all, allPlain)).toBe(true);
    } finally {
      await Promise.all([fused.close(), plain.close()]);
    }
  });

  it('refuses bad ranges and inputs before running anything', async () => {
    await expect(StageRunner.load(dir, { fusedRanges: [[2, 2]] })).rejects.toThrow(ModelOptionError);
    await expect(StageRunner.load(dir, { stages: [0, 1], fusedRanges: [[0, 3]] })).rejects.toThrow(
      'fusedRanges[0] must cover only loaded stages (stage 2 is not)',
    );
    const runner = await StageRunner.load(dir, { fusedRanges: [[0, N]] });
    try {
      const cache = runner.newCache();
      await expect(runner.runRange(0, 0, ids([1]), cache)).rejects.toThrow(StageInputError);
      await expect(runner.runRange(0, N + 1, ids([1]), cache)).rejects.toThrow('end must be a stage index in 1..6');
      await expect(runner.runRange(0, N, { dtype: 'float32', shape: [1, 1, 64], data: new Float32Array(64) }, cache)).rejects.toThrow(
        "input.dtype must be 'int64'",
      );
      await expect(runner.runRange(0, N, ids([V]), cache)).rejects.toThrow('input.data[0] must be a token id');
      await expect(runner.runRange(0, N, ids(Array.from({ length: 1025 }, () => 1)), cache)).rejects.toThrow('nPositions = 1024');
      expect(cache.embeddedTokens).toBe(0);
      expect(cache.kvBytes).toBe(0);
    } finally {
      await runner.close();
    }
  });
});
