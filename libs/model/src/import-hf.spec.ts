import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import {
  type Dtype,
  type FixtureOptions,
  SMALL_HF_CONFIG,
  maxAbsDiff,
  randomWeights,
  referenceLogits,
  writeHfFixture,
  writeSafetensors,
} from '@tandem/testkit';
import { ImportError } from './errors';
import { importHfModel } from './import-hf';
import { SplitPipeline } from './pipeline';
import { bf16ToF32, f16ToF32 } from './safetensors';

let root: string;
let n = 0;
beforeAll(() => {
  root = mkdtempSync(path.join(tmpdir(), 'model-import-'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const c = SMALL_HF_CONFIG;
const weights = randomWeights(c, 11);
const IDS = [5, 17, 211, 3, 250, 42, 0, 299];

async function importFixture(opts: FixtureOptions): Promise<{ out: string; stored: ReturnType<typeof writeHfFixture> }> {
  const k = n++;
  const hf = path.join(root, `hf${k}`);
  const stored = writeHfFixture(hf, c, weights, opts);
  const out = path.join(root, `m${k}`);
  await importHfModel({ from: hf, out });
  return { out, stored };
}

async function forward(dir: string, placement: string): Promise<Float32Array> {
  const p = await SplitPipeline.load(dir, placement);
  try {
    return (await p.forward(IDS)).data;
  } finally {
    await p.close();
  }
}

describe('importHfModel', () => {
  const variants: [string, Dtype, boolean, boolean][] = [
    ['F32 without prefix, BOOL attn.bias buffers', 'F32', false, true],
    ['F16 with the transformer. prefix', 'F16', true, true],
    ['BF16 without prefix, with a tied lm_head', 'BF16', false, false],
  ];
  it.each(variants)('imports %s and matches a float64 reference forward', async (_label, dtype, prefix, boolAttnBias) => {
    const { out, stored } = await importFixture({ dtype, prefix, boolAttnBias, lmHead: !boolAttnBias });
    const ref = referenceLogits(c, stored, IDS);
    expect(Math.max(...ref.map(Math.abs))).toBeGreaterThan(0.5); // a meaningful scale for the tolerance
    for (const placement of ['SSSSSS', 'CSCSCS']) {
      expect(maxAbsDiff(await forward(out, placement), ref)).toBeLessThanOrEqual(1e-4);
    }
  });

  it('names a missing tensor with its expected shape', async () => {
    const hf = path.join(root, 'missing');
    writeHfFixture(hf, c, weights, { prefix: true, omit: ['h.1.mlp.c_fc.bias'] });
    const err = await importHfModel({ from: hf, out: path.join(root, 'missing-out') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImportError);
    expect((err as Error).message).toBe('tensor transformer.h.1.mlp.c_fc.bias is missing: expected shape [128], found none');
  });

  it('names a mis-shaped tensor with the expected and found shapes', async () => {
    const hf = path.join(root, 'misshaped');
    writeHfFixture(hf, c, weights, { reshape: { 'h.0.attn.c_attn.weight': [32, 64] } });
    await expect(importHfModel({ from: hf, out: path.join(root, 'misshaped-out') })).rejects.toThrow(
      'tensor h.0.attn.c_attn.weight has the wrong shape: expected shape [32,96], found [32,64]',
    );
  });

  it('names a bad config field', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ n_head: 5 }, 'config.json n_head must divide n_embd (32), given 5'],
      [{ n_layer: 0 }, 'config.json n_layer must be an integer in 1..1024, given 0'],
      [{ vocab_size: 'x' }, "config.json vocab_size must be an integer in 1..16777216, given 'x'"],
      [{ layer_norm_epsilon: -1 }, 'config.json layer_norm_epsilon must be a number in (0, 1), given -1'],
      [{ n_inner: 100 }, 'config.json n_inner must be null or 4*n_embd (128), given 100'],
    ];
    for (const [patch, message] of cases) {
      const hf = path.join(root, `cfg${n++}`);
      writeHfFixture(hf, c, weights, { configPatch: patch });
      await expect(importHfModel({ from: hf, out: path.join(hf, 'out') })).rejects.toThrow(message);
    }
  });

  it('refuses an unsupported dtype for a used tensor', async () => {
    const hf = path.join(root, 'i64');
    writeHfFixture(hf, c, weights, {});
    // Rewrite wpe as I64 by hand: same byte length as F32 doubled.
    const entries = [...weights].map(([name, w]) => ({ name, dtype: 'F32', shape: w.shape, bytes: new Uint8Array(Float32Array.from(w.values).buffer) }));
    const wpe = entries.find((e) => e.name === 'wpe.weight') as (typeof entries)[number];
    wpe.dtype = 'I64';
    wpe.bytes = new Uint8Array(wpe.bytes.length * 2);
    writeSafetensors(path.join(hf, 'model.safetensors'), entries);
    await expect(importHfModel({ from: hf, out: path.join(root, 'i64-out') })).rejects.toThrow("wpe.weight dtype must be F32, F16 or BF16, given 'I64'");
  });
});

describe('half-precision conversion', () => {
  it('converts F16 exactly, subnormals and specials included', () => {
    const bits = Uint16Array.of(0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x7c00, 0xfc00, 0x8000, 0x3555);
    const want = [1, -2, 65504, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, Infinity, -Infinity, -0, 2 ** -2 * (1 + 0x155 / 1024)];
    expect([...f16ToF32(bits)]).toEqual(want);
    expect(Number.isNaN(f16ToF32(Uint16Array.of(0x7e00))[0])).toBe(true);
  });

  it('converts BF16 as the high half of a float32', () => {
    expect([...bf16ToF32(Uint16Array.of(0x3f80, 0xc040, 0x3e20))]).toEqual([1, -3, 0.15625]);
  });
});
