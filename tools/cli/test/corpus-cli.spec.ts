import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clearMessageProblem, makeTempModel, type TempModel } from '@tandem/testkit';
import { run } from './run-cli';

// Bad-input corpus, CLI surface (e2e/test/CORPUS.md): each `tandem` command with a bad flag or
// file exits 2 (bad usage or input) with stdout empty and one message on stderr that names the
// flag or field and the rule, in 1 KiB. (No service runs here: the CLI is one process.)

const LONG = 'x'.repeat(20_000);

describe('CLI bad-input corpus', () => {
  let root: string;
  let model: TempModel;
  const file = (name: string, text: string): string => {
    const p = join(root, name);
    writeFileSync(p, text);
    return p;
  };

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'tandem-cli-corpus-'));
    model = await makeTempModel();
  });
  afterAll(() => {
    model?.remove();
    rmSync(root, { recursive: true, force: true });
  });

  type Case = readonly [label: string, argv: () => string[], parts: readonly string[]];
  const m = (): string => model.dir;
  /** `tandem forward` of `ids` at `placement`, of the good model unless `modelDir`, to a file under root. */
  function forward(ids: string, placement: string, modelDir = m()): string[] {
    return ['forward', '--model', modelDir, '--ids', ids, '--placement', placement, '--out', join(root, 'f')];
  }
  const cases: Case[] = [
    // the command line itself
    ['an unknown command', () => ['frobnicate'], ["unknown command 'frobnicate'"]],
    ['an unknown command of 20,000 characters', () => [LONG], ['unknown command', '(20000 chars)']],
    ['an unknown option', () => ['plan', '--instanse', 'x'], ['unknown option --instanse', 'options are']],
    ['an option given twice', () => ['model', 'create', '--preset', 'tiny', '--preset', 'tiny', '--out', 'x'], ['--preset must be given once']],
    ['an option without its value', () => ['model', 'create', '--out'], ['--out needs a value']],
    ['a switch with a value', () => ['simulate', '--quick=yes'], ['--quick takes no value', "given 'yes'"]],
    ['a bare argument', () => ['plan', 'instance.json'], ["unexpected argument 'instance.json'"]],
    ['a bare argument of 20,000 characters', () => ['plan', LONG], ['unexpected argument', '(20000 chars)']],
    // model create / import
    ['model create without --seed', () => ['model', 'create', '--preset', 'tiny'], ['--seed is required']],
    ['model create of an unknown preset', () => ['model', 'create', '--preset', 'huge', '--out', join(root, 'm1')], ['--preset must be', "'huge'"]],
    [
      'model create of a negative seed',
      () => ['model', 'create', '--preset', 'tiny', '--seed', '-1', '--out', join(root, 'm2')],
      ['--seed must be an integer', "given '-1'"],
    ],
    [
      'model create of a seed that is no number',
      () => ['model', 'create', '--preset', 'tiny', '--seed', 'abc', '--out', join(root, 'm3')],
      ['--seed must be an integer', "given 'abc'"],
    ],
    [
      'model create of a 20,000-digit seed',
      () => ['model', 'create', '--preset', 'tiny', '--seed', '9'.repeat(20_000), '--out', join(root, 'm4')],
      ['--seed must be an integer', '(20000 chars)'],
    ],
    ['model import without --from', () => ['model', 'import', '--out', join(root, 'i1')], ['--from is required']],
    ['model import from a missing folder', () => ['model', 'import', '--from', join(root, 'nope'), '--out', join(root, 'i2')], ['config.json']],
    [
      'model import of a config.json that is no JSON',
      () => {
        const dir = mkdtempSync(join(root, 'hf-'));
        writeFileSync(join(dir, 'config.json'), '{');
        return ['model', 'import', '--from', dir, '--out', join(root, 'i3')];
      },
      ['config.json'],
    ],
    // forward
    ['forward without --model', () => ['forward', '--ids', '1,2', '--placement', 'SSSSSS', '--out', join(root, 'f')], ['--model is required']],
    ['forward of ids that are no numbers', () => forward('a,b', 'SSSSSS'), ['--ids must be', "'a,b'"]],
    ['forward of an id past the vocabulary', () => forward('1,50257', 'SSSSSS'), ['--ids', '50257']],
    ['forward of a placement too short', () => forward('1,2', 'SS'), ['--placement must have one C/S character per stage (6 characters)', "given 'SS'"]],
    [
      'forward of a placement with other letters',
      () => forward('1,2', 'SSXSSS'),
      ["--placement must contain only 'C' (client) and 'S' (server)", "given 'SSXSSS'"],
    ],
    ['forward of a model folder that does not exist', () => forward('1', 'SSSSSS', join(root, 'none')), ['manifest']],
    // generate
    [
      'generate with both --prompt and --ids',
      () => ['generate', '--model', m(), '--prompt', 'hi', '--ids', '1', '--max-new-tokens', '1', '--placement', 'SSSSSS'],
      ['--prompt', '--ids'],
    ],
    ['generate with neither --prompt nor --ids', () => ['generate', '--model', m(), '--max-new-tokens', '1', '--placement', 'SSSSSS'], ['--prompt', '--ids']],
    [
      'generate of more new tokens than the context',
      () => ['generate', '--model', m(), '--ids', '1,2', '--max-new-tokens', '1024', '--placement', 'SSSSSS'],
      ['--max-new-tokens must keep prompt (2 tokens) + N - 1 within nPositions = 1024', 'given 1024'],
    ],
    [
      'generate with both --model and --agent',
      () => ['generate', '--model', m(), '--agent', '127.0.0.1:1', '--ids', '1', '--max-new-tokens', '1'],
      ['--model', '--agent'],
    ],
    [
      'generate of a 20,000-character placement',
      () => ['generate', '--model', m(), '--ids', '1', '--max-new-tokens', '1', '--placement', 'S'.repeat(20_000)],
      ['--placement must have one C/S character per stage (6 characters)', '...'],
    ],
    // plan
    ['plan without --instance', () => ['plan'], ['--instance is required']],
    ['plan of a missing instance file', () => ['plan', '--instance', join(root, 'none.json')], ['--instance', 'none.json']],
    ['plan of an instance that is no JSON', () => ['plan', '--instance', file('bad.json', '{nope')], ['--instance', 'JSON']],
    ['plan of an unknown algorithm', () => ['plan', '--instance', file('empty.json', '{}'), '--algorithm', 'magic'], ['--algorithm must be one of', "'magic'"]],
    ['plan of an instance without stages', () => ['plan', '--instance', file('nostages.json', '{"stages": []}')], ['stages']],
    // plans
    ['plans without --planner', () => ['plans'], ['--planner is required']],
    ['plans of page size 0', () => ['plans', '--planner', '127.0.0.1:1', '--page-size', '0'], ['--page-size must be an integer in 1..', "given '0'"]],
    [
      'plans of a CA file that does not exist',
      () => ['plans', '--planner', '127.0.0.1:1', '--tls-ca', join(root, 'no-ca.pem')],
      ['--tls-ca must name a readable file', 'no-ca.pem'],
    ],
    ['plans of a CA file that is no PEM', () => ['plans', '--planner', '127.0.0.1:1', '--tls-ca', file('ca.pem', 'not a certificate')], ['--tls-ca']],
    ['plans of a token with a space', () => ['plans', '--planner', '127.0.0.1:1', '--token', 'a b'], ['--token must be printable ASCII without spaces']],
    // simulate / loadtest
    ['simulate with an unknown option', () => ['simulate', '--fast'], ['unknown option --fast']],
    ['loadtest of an unknown scenario file', () => ['loadtest', '--scenario', join(root, 'no-scenario.json')], ['--scenario', 'no-scenario.json']],
    ['loadtest of 0 repeats', () => ['loadtest', '--repeats', '0'], ['--repeats must be an integer in 1..', "given '0'"]],
    ['loadtest of a scenario that is no JSON', () => ['loadtest', '--scenario', file('scenario.json', '[')], ['--scenario', 'JSON']],
    ['loadtest of 9 executors', () => ['loadtest', '--executors', '9'], ['--executors must be an integer in 1..8', "given '9'"]],
    [
      'loadtest --report-only of a directory that does not exist',
      () => ['loadtest', '--report-only', join(root, 'no-run')],
      ['--report-only', 'no-run', 'does not exist'],
    ],
    [
      'loadtest --report-only of a runs.json that is no JSON',
      () => ['loadtest', '--report-only', (file('runs.json', '{'), root)],
      ['--report-only', 'runs.json must be JSON'],
    ],
    // certs / nats-config / demo
    ['certs without --out', () => ['certs'], ['--out is required']],
    ['certs of 0 days', () => ['certs', '--out', join(root, 'c1'), '--days', '0'], ['--days must be an integer in 1..', "given '0'"]],
    ['certs of a host with a space', () => ['certs', '--out', join(root, 'c2'), '--host', 'a b'], ['--host', "'a b'"]],
    ['nats-config without --agents', () => ['nats-config', '--out', join(root, 'n1')], ['--agents is required']],
    [
      'nats-config of an agent id with a dot',
      () => ['nats-config', '--agents', 'a.b', '--out', join(root, 'n2')],
      ['--agents must be a comma-separated list of ids matching', "given 'a.b'"],
    ],
    [
      'nats-config of an unknown auth',
      () => ['nats-config', '--agents', 'a', '--auth', 'kerberos', '--out', join(root, 'n3')],
      ['--auth must be one of', "'kerberos'"],
    ],
    ['demo with an unknown option', () => ['demo', '--tls'], ['unknown option --tls']],
  ];

  it.each(cases)('exits 2 for %s, naming the flag and the rule in under 1 KiB', async (_label, argv, parts) => {
    const r = await run(argv());
    expect({ code: r.code, stdout: r.stdout, problem: clearMessageProblem(r.stderr, parts) }).toEqual({ code: 2, stdout: '', problem: '' });
  });
});
