import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clearMessageProblem } from '@tandem/testkit';
import { createModel, isModelInputError, readManifest, SplitPipeline } from '../src';

// Bad-input corpus, model-file surface (e2e/test/CORPUS.md): a model directory with one bad
// manifest field or one missing, short or corrupt weight file is refused with a
// ModelFormatError (the error the services turn into a startup failure and the CLI into exit 2)
// naming the field or file and the rule, in 1 KiB. Loading runs the real onnxruntime.

type Manifest = { config: Record<string, unknown>; stages: Record<string, unknown>[]; [k: string]: unknown };
const LONG = 'x'.repeat(20_000);

describe('model-file corpus', () => {
  let root: string;
  let good: string;
  let n = 0;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'tandem-model-corpus-'));
    good = join(root, 'good');
    await createModel({ preset: 'tiny', seed: 1, out: good });
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  /** A copy of the good model with `change` applied to it. */
  const broken = (change: (dir: string) => void): string => {
    const dir = join(root, `m${n++}`);
    cpSync(good, dir, { recursive: true });
    change(dir);
    return dir;
  };
  const manifest =
    (f: (m: Manifest) => void) =>
    (dir: string): void => {
      const p = join(dir, 'manifest.json');
      const m = JSON.parse(readFileSync(p, 'utf8')) as Manifest;
      f(m);
      writeFileSync(p, JSON.stringify(m));
    };
  /** A change setting the manifest field at `path` (keys and array indices, e.g. 'stages.3.file') to `value`. */
  const setField = (path: string, value: unknown): ((dir: string) => void) =>
    manifest((m) => {
      const keys = path.split('.');
      const last = keys.pop()!;
      const parent = keys.reduce<Record<string, unknown>>((o, k) => o[k] as Record<string, unknown>, m);
      parent[last] = value;
    });
  const file =
    (rel: string, f: (p: string) => void) =>
    (dir: string): void =>
      f(join(dir, rel));

  type Case = readonly [label: string, change: (dir: string) => void, parts: readonly string[]];
  const manifestCases: Case[] = [
    ['no manifest.json', file('manifest.json', unlinkSync), ['manifest.json must exist in the model directory']],
    ['a manifest that is no JSON', file('manifest.json', (p) => writeFileSync(p, '{"format":')), ['manifest.json must be valid JSON']],
    ['a manifest that is an array', file('manifest.json', (p) => writeFileSync(p, '[]')), ['manifest must be a JSON object']],
    ['another format', setField('format', 'tandem-model/2'), ["format must be 'tandem-model/1'", "given 'tandem-model/2'"]],
    ['another family', setField('family', 'llama'), ["family must be 'gpt2'", "given 'llama'"]],
    [
      'no config',
      manifest((m) => {
        delete (m as Record<string, unknown>).config;
      }),
      ['config must be an object'],
    ],
    ['nLayer 0', setField('config.nLayer', 0), ['config.nLayer must be an integer in 1..', 'given 0']],
    ['nEmbd a string', setField('config.nEmbd', '64'), ['config.nEmbd must be an integer', "given '64'"]],
    ['vocabSize 1e12', setField('config.vocabSize', 1e12), ['config.vocabSize must be an integer in 1..']],
    ['nHead that does not divide nEmbd', setField('config.nHead', 3), ['config.nHead must divide config.nEmbd (64)', 'given 3']],
    ['layerNormEpsilon 0', setField('config.layerNormEpsilon', 0), ['config.layerNormEpsilon must be a number in (0, 1)', 'given 0']],
    ['one stage too few', manifest((m) => m.stages.pop()), ['stages must be an array of 2*nLayer+2 = 6 entries', '5 entries']],
    ['a stage that is no object', setField('stages.2', 7), ['stages[2] must be an object', 'given 7']],
    [
      'stages out of order',
      manifest((m) => ([m.stages[1], m.stages[2]] = [m.stages[2], m.stages[1]])),
      ["stages[1].name must be 'block.0.attn'", "given 'block.0.mlp'"],
    ],
    [
      'a stage file outside the directory',
      setField('stages.0.file', '../../etc/passwd.onnx'),
      ['stages[0].file must be a relative path inside the model directory'],
    ],
    ['an absolute stage file', setField('stages.0.file', '/etc/embed.onnx'), ['stages[0].file must be a relative path inside the model directory']],
    ['a stage file that is no .onnx', setField('stages.3.file', 'stages/block.1.attn.bin'), ['stages[3].file must name an .onnx file']],
    ['a 20,000-character stage file', setField('stages.3.file', `${LONG}.onnx`), ['stages[3].file must', '...']],
    ['a wrong inBytesPerToken', setField('stages.1.inBytesPerToken', 8), ['stages[1].inBytesPerToken must be 256', 'given 8']],
    ['dataFiles that are no array', setField('stages.1.dataFiles', 'stages/x.bin'), ['stages[1].dataFiles must be an array of relative paths']],
    [
      'a data file outside the directory',
      setField('stages.2.dataFiles', ['../w.bin']),
      ['stages[2].dataFiles[0] must be a relative path inside the model directory'],
    ],
  ];
  const weightCases: Case[] = [
    ['a missing stage file', file('stages/block.0.mlp.onnx', unlinkSync), ['stages[2].file must name an existing file', 'block.0.mlp.onnx']],
    ['a missing weight file', file('stages/block.1.attn.bin', unlinkSync), ['stages[3].dataFiles[0] must name an existing file', 'block.1.attn.bin']],
    [
      'a weight file cut short',
      file('stages/block.0.attn.bin', (p) => truncateSync(p, 100)),
      ['stages[1].file must be a complete ONNX graph with complete weight files', 'block.0.attn.bin'],
    ],
    [
      'an empty weight file',
      file('stages/block.1.mlp.bin', (p) => truncateSync(p, 0)),
      ['stages[4].file must be a complete ONNX graph with complete weight files', 'block.1.mlp.bin'],
    ],
    [
      'a stage file cut short',
      file('stages/head.onnx', (p) => truncateSync(p, 40)),
      ['stages[5].file must be a complete ONNX graph', "given 'stages/head.onnx'"],
    ],
    [
      'a stage file of random bytes',
      file('stages/block.0.attn.onnx', (p) => writeFileSync(p, Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 131 + 7) & 0xff)))),
      ['stages[1].file must be a complete ONNX graph', "given 'stages/block.0.attn.onnx'"],
    ],
    [
      'an empty stage file',
      file('stages/embed.onnx', (p) => truncateSync(p, 0)),
      ['stages[0].file must be a complete ONNX graph', "given 'stages/embed.onnx'"],
    ],
  ];

  const refusal = async (dir: string): Promise<unknown> => {
    try {
      await readManifest(dir);
      const pipe = await SplitPipeline.load(dir, 'SSSSSS');
      await pipe.close();
    } catch (err) {
      return err;
    }
    return undefined;
  };

  it.each([...manifestCases, ...weightCases])('refuses %s with a ModelFormatError naming it', async (_label, change, parts) => {
    const err = await refusal(broken(change));
    expect({ modelInputError: isModelInputError(err), problem: clearMessageProblem((err as Error | undefined)?.message, ['must', ...parts]) }).toEqual({
      modelInputError: true,
      problem: '',
    });
  });

  it('loads the good model (the corpus changes one thing each)', async () => {
    expect(await refusal(good)).toBeUndefined();
  });
});
