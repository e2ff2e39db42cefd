import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { SMALL_HF_CONFIG, maxAbsDiff, randomWeights, referenceLogits, writeHfFixture } from '@tandem/testkit';
import { runCli } from '../src/main';

const REPO = path.resolve(__dirname, '../../..');
let root: string;
let model: string;

function sink(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  return {
    stream: new Writable({
      write(c, _e, cb) {
        chunks.push(String(c));
        cb();
      },
    }),
    text: () => chunks.join(''),
  };
}

async function cli(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = sink();
  const err = sink();
  const code = await runCli(argv, { stdout: out.stream, stderr: err.stream });
  return { code, stdout: out.text(), stderr: err.text() };
}

beforeAll(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'cli-model-'));
  model = path.join(root, 'tiny');
  const r = await cli('model', 'create', '--preset', 'tiny', '--seed', '1', '--out', model);
  expect(r).toMatchObject({ code: 0 });
  expect(r.stderr).toMatch(/model create tiny: 100%/);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('tandem generate (real CLI process)', () => {
  it('gives the same 8 ids with CCSSSC as with SSSSSS', () => {
    const run = (placement: string): { ids: number[]; text: string } => {
      const r = spawnSync(
        process.execPath,
        ['tools/cli/bin/tandem.js', 'generate', '--model', model, '--prompt', 'Hello', '--max-new-tokens', '8', '--placement', placement, '--json'],
        { cwd: REPO, encoding: 'utf8', timeout: 60000 },
      );
      expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
      return JSON.parse(r.stdout);
    };
    const all = run('SSSSSS');
    expect(all.ids).toHaveLength(8);
    expect(typeof all.text).toBe('string');
    expect(run('CCSSSC')).toEqual(all);
  });
});

describe('tandem forward', () => {
  it('writes [n, V] little-endian float32 logits equal across placements, and the argmax with --json', async () => {
    const a = await cli('forward', '--model', model, '--ids', '15496,11,995', '--placement', 'SSSSSS', '--out', path.join(root, 'a.f32'), '--json');
    const b = await cli('forward', '--model', model, '--ids', '15496,11,995', '--placement', 'CSCSCS', '--out', path.join(root, 'b.f32'), '--json');
    expect(a.code).toBe(0);
    expect(b.code).toBe(0);
    const ja = JSON.parse(a.stdout);
    expect(ja).toMatchObject({ tokens: 3, stages: 6, placement: 'SSSSSS' });
    expect(ja.argmax).toHaveLength(3);
    expect(JSON.parse(b.stdout).argmax).toEqual(ja.argmax);
    const fa = readFileSync(path.join(root, 'a.f32'));
    expect(fa.length).toBe(3 * 50257 * 4);
    const la = new Float32Array(fa.buffer, fa.byteOffset, fa.length / 4);
    const fb = readFileSync(path.join(root, 'b.f32'));
    expect(maxAbsDiff(la, new Float32Array(fb.buffer, fb.byteOffset, fb.length / 4))).toBeLessThanOrEqual(1e-5);
    let best = 0;
    for (let v = 1; v < 50257; v++) if (la[v] > la[best]) best = v;
    expect(ja.argmax[0]).toBe(best);
  });

  it.each([
    [['--placement', 'CSCSC'], /^tandem forward: --placement must have one C\/S character per stage \(6 characters\), given 'CSCSC'\n$/],
    [['--placement', 'CSCSCSS'], /--placement must have one C\/S character per stage \(6 characters\), given 'CSCSCSS'/],
    [['--placement', 'CSxSCS'], /--placement must contain only 'C' \(client\) and 'S' \(server\); character 2 is 'x', given 'CSxSCS'/],
    [['--ids', '15496,50257'], /--ids must hold token ids in 0\.\.50256 \(the model's vocabulary\), given 50257 at position 1/],
    [['--ids', '1,-2'], /--ids must be a comma-separated list of token ids \(non-negative integers\), given '1,-2'/],
    [['--model', '/nonexistent/model'], /--model \/nonexistent\/model: manifest\.json must exist/],
  ])('refuses %j with exit 2 and one line naming flag, rule and value', async (patch, message) => {
    const flags: Record<string, string> = { '--model': model, '--ids': '15496,11', '--placement': 'SSSSSS', '--out': path.join(root, 'x.f32') };
    for (let i = 0; i < patch.length; i += 2) flags[patch[i]] = patch[i + 1];
    const r = await cli('forward', ...Object.entries(flags).flat());
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});

describe('tandem generate', () => {
  it('takes --ids as well as --prompt and prints the text without --json', async () => {
    const j = await cli('generate', '--model', model, '--ids', '15496', '--max-new-tokens', '4', '--placement', 'CCSSSC', '--json');
    expect(j.code).toBe(0);
    const { ids, text } = JSON.parse(j.stdout);
    expect(ids).toHaveLength(4);
    const plain = await cli('generate', '--model', model, '--prompt', 'Hello', '--max-new-tokens', '4', '--placement', 'SSSSSS');
    expect(plain.code).toBe(0);
    expect(plain.stdout).toBe(`${text}\n`);
  });

  it.each([
    [['--prompt', 'Hi', '--ids', '1'], /--prompt and --ids are exclusive/],
    [['--max-new-tokens', '-1'], /--max-new-tokens must be an integer in 0\.\.1024, given '-1'/],
    [['--ids', '1,2,3', '--max-new-tokens', '1023'], /--max-new-tokens must keep prompt \(3 tokens\) \+ N - 1 within nPositions = 1024, given 1023/],
    [['--placement', 'SSSS'], /--placement must have one C\/S character per stage/],
  ])('refuses %j with exit 2', async (patch, message) => {
    const flags: Record<string, string> = { '--model': model, '--max-new-tokens': '2', '--placement': 'SSSSSS' };
    for (let i = 0; i < patch.length; i += 2) flags[patch[i]] = patch[i + 1];
    if (!('--ids' in flags)) flags['--prompt'] = 'Hello';
    const r = await cli('generate', ...Object.entries(flags).flat());
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });
});

describe('tandem model create / import', () => {
  it('refuses an unknown preset and a bad seed with exit 2', async () => {
    expect(await cli('model', 'create', '--preset', 'huge', '--seed', '1', '--out', path.join(root, 'h'))).toMatchObject({
      code: 2,
      stderr: "tandem model create: --preset must be one of tiny, small, gpt2, given 'huge'\n",
    });
    expect((await cli('model', 'create', '--preset', 'tiny', '--seed', 'x', '--out', path.join(root, 'h'))).code).toBe(2);
  });

  const c = SMALL_HF_CONFIG;
  const weights = randomWeights(c, 5);

  it('imports a checkpoint whose forward matches the float64 reference', async () => {
    const hf = path.join(root, 'hf-ok');
    const stored = writeHfFixture(hf, c, weights, { dtype: 'BF16', prefix: true, boolAttnBias: true });
    const out = path.join(root, 'imported');
    const imp = await cli('model', 'import', '--from', hf, '--out', out, '--json');
    expect(imp.code).toBe(0);
    expect(JSON.parse(imp.stdout)).toMatchObject({ stages: 6, config: { vocabSize: 300, nPositions: 32, nEmbd: 32, nLayer: 2, nHead: 4 } });
    const ids = [5, 17, 211, 3];
    const f = await cli('forward', '--model', out, '--ids', ids.join(','), '--placement', 'CCSSSC', '--out', path.join(root, 'imp.f32'));
    expect(f.code).toBe(0);
    const bytes = readFileSync(path.join(root, 'imp.f32'));
    expect(maxAbsDiff(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4), referenceLogits(c, stored, ids))).toBeLessThanOrEqual(1e-4);
  });

  it('exits 2 naming a missing tensor with its expected shape', async () => {
    const hf = path.join(root, 'hf-missing');
    writeHfFixture(hf, c, weights, { omit: ['wpe.weight'] });
    const r = await cli('model', 'import', '--from', hf, '--out', path.join(root, 'm1'));
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`tandem model import: --from ${hf}: tensor wpe.weight is missing: expected shape [32,32], found none\n`);
  });

  it('exits 2 naming a mis-shaped tensor with the expected and found shapes', async () => {
    const hf = path.join(root, 'hf-shape');
    writeHfFixture(hf, c, weights, { prefix: true, reshape: { 'h.1.mlp.c_proj.weight': [128, 16] } });
    const r = await cli('model', 'import', '--from', hf, '--out', path.join(root, 'm2'));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/tensor transformer\.h\.1\.mlp\.c_proj\.weight has the wrong shape: expected shape \[128,32\], found \[128,16\]\n$/);
  });

  it('exits 2 naming a bad config field', async () => {
    const hf = path.join(root, 'hf-cfg');
    writeHfFixture(hf, c, weights, { configPatch: { n_embd: 30 } });
    const r = await cli('model', 'import', '--from', hf, '--out', path.join(root, 'm3'));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config\.json n_head must divide n_embd \(30\), given 4/);
  });
});
