import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { PRESETS } from './config';
import { createModel } from './create';
import { ModelFormatError, ModelOptionError } from './errors';
import { readManifest, stageCount, validateManifest } from './manifest';

let root: string;
beforeAll(() => {
  root = mkdtempSync(path.join(tmpdir(), 'model-create-'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

function filesOf(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (rel: string): void => {
    for (const e of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      if (e.isDirectory()) walk(r);
      else out.set(r, readFileSync(path.join(dir, r)));
    }
  };
  walk('');
  return out;
}

describe('createModel', () => {
  it('writes byte-identical files for the same preset and seed, wherever the directory is', async () => {
    const a = path.join(root, 'a');
    const b = path.join(root, 'deeper', 'elsewhere', 'b');
    await createModel({ preset: 'tiny', seed: 3, out: a });
    await createModel({ preset: 'tiny', seed: 3, out: b });
    const fa = filesOf(a);
    const fb = filesOf(b);
    expect([...fa.keys()].sort()).toEqual([...fb.keys()].sort());
    for (const [name, bytes] of fa) expect({ name, same: bytes.equals(fb.get(name) as Buffer) }).toEqual({ name, same: true });
    // No absolute path leaks into the files.
    for (const bytes of fa.values()) expect(bytes.includes(Buffer.from(root))).toBe(false);
  });

  it('gives different weights for a different seed', async () => {
    await createModel({ preset: 'tiny', seed: 3, out: path.join(root, 's3') });
    await createModel({ preset: 'tiny', seed: 4, out: path.join(root, 's4') });
    for (const f of ['stages/wte.bin', 'stages/block.0.attn.bin', 'stages/head.bin']) {
      expect(readFileSync(path.join(root, 's3', f)).equals(readFileSync(path.join(root, 's4', f)))).toBe(false);
    }
  });

  it('writes the contract manifest: 2*nLayer+2 stages with names, files and inBytesPerToken', async () => {
    const dir = path.join(root, 'a');
    const m = await readManifest(dir);
    const raw = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
    expect(raw.format).toBe('tandem-model/1');
    expect(raw.family).toBe('gpt2');
    expect(raw.config).toEqual(PRESETS.tiny);
    expect(raw.stages.map((s: { name: string }) => s.name)).toEqual(['embed', 'block.0.attn', 'block.0.mlp', 'block.1.attn', 'block.1.mlp', 'head']);
    expect(raw.stages.map((s: { inBytesPerToken: number }) => s.inBytesPerToken)).toEqual([8, 256, 256, 256, 256, 256]);
    expect(m.stages).toHaveLength(stageCount(PRESETS.tiny));
    // The tied embedding is stored once and shared by embed and head.
    expect(m.stages[0].dataFiles).toContain('stages/wte.bin');
    expect(m.stages[5].dataFiles).toContain('stages/wte.bin');
    expect(readFileSync(path.join(dir, 'stages/wte.bin')).length).toBe(50257 * 64 * 4);
  });

  it('replaces a previous model but refuses a directory holding other files', async () => {
    const dir = path.join(root, 'replace');
    await createModel({ preset: 'tiny', seed: 1, out: dir });
    await createModel({ preset: 'tiny', seed: 2, out: dir });
    expect((await readManifest(dir)).source).toEqual({ kind: 'synthetic', preset: 'tiny', seed: 2 });
    const other = path.join(root, 'other');
    mkdirSync(other);
    writeFileSync(path.join(other, 'notes.txt'), 'x');
    await expect(createModel({ preset: 'tiny', seed: 1, out: other })).rejects.toBeInstanceOf(ModelOptionError);
    await expect(createModel({ preset: 'huge', seed: 1, out: path.join(root, 'h') })).rejects.toThrow("preset must be one of tiny, small, gpt2, given 'huge'");
    await expect(createModel({ preset: 'tiny', seed: -1, out: path.join(root, 'h') })).rejects.toThrow(/seed must be an integer/);
  });
});

describe('readManifest', () => {
  const good = (): Record<string, unknown> => JSON.parse(readFileSync(path.join(root, 'a', 'manifest.json'), 'utf8'));

  it('names the bad field, the rule and the value', () => {
    const cases: [(m: Record<string, unknown>) => void, string][] = [
      [
        (m) => {
          m.format = 'x/2';
        },
        "format must be 'tandem-model/1', given 'x/2'",
      ],
      [
        (m) => {
          (m.config as Record<string, unknown>).nHead = 5;
        },
        'config.nHead must divide config.nEmbd (64), given 5',
      ],
      [
        (m) => {
          (m.config as Record<string, unknown>).nLayer = 0;
        },
        'config.nLayer must be an integer in 1..1024, given 0',
      ],
      [
        (m) => {
          (m.stages as unknown[]).pop();
        },
        "stages must be an array of 2*nLayer+2 = 6 entries, given '5 entries'",
      ],
      [
        (m) => {
          (m.stages as Record<string, unknown>[])[3].name = 'block.9.attn';
        },
        "stages[3].name must be 'block.1.attn', given 'block.9.attn'",
      ],
      [
        (m) => {
          (m.stages as Record<string, unknown>[])[2].file = '../x.onnx';
        },
        "stages[2].file must be a relative path inside the model directory, given '../x.onnx'",
      ],
      [
        (m) => {
          (m.stages as Record<string, unknown>[])[0].inBytesPerToken = 256;
        },
        'stages[0].inBytesPerToken must be 8, given 256',
      ],
    ];
    for (const [mutate, message] of cases) {
      const m = good();
      mutate(m);
      expect(() => validateManifest(m)).toThrow(new ModelFormatError('x', 'y', 'z').constructor as typeof ModelFormatError);
      expect(() => validateManifest(m)).toThrow(message);
    }
  });

  it('reports a missing directory or stage file', async () => {
    await expect(readManifest(path.join(root, 'nope'))).rejects.toThrow(/manifest\.json must exist in the model directory/);
    const dir = path.join(root, 'broken');
    await createModel({ preset: 'tiny', seed: 1, out: dir });
    rmSync(path.join(dir, 'stages', 'block.1.mlp.onnx'));
    await expect(readManifest(dir)).rejects.toThrow("stages[4].file must name an existing file, given 'stages/block.1.mlp.onnx'");
  });
});
