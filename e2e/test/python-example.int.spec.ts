import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateVia, type GenerateRequest } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { canConnect, eventually } from '@tandem/testkit';
import type { DemoReport } from '@tandem/demo';
import { makeCredentials, type TestCredentials } from './credentials';
import { startOneDevice, type OneDevice } from './stack';

// examples/python run as a user would: stubs compiled from proto/ with Debian's protoc and
// grpc_python_plugin into a temporary folder, each script run with /usr/bin/python3 (Debian's
// python3-grpcio, python3-protobuf, python3-numpy) against the real executor, planner and agent,
// started as deployed (mTLS and bearer tokens on every gRPC port, NATS users).

const ROOT = join(__dirname, '..', '..');
const EXAMPLES = join(ROOT, 'examples', 'python');
const PYTHON = '/usr/bin/python3';
const PROMPT_IDS = [15496, 11, 995, 318];
const NEW_TOKENS = 6;
const log = createLogger({ name: 'test', level: 'silent' });

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to completion (bounded at 60 s), capturing its output; never rejects on a non-zero exit. */
function run(cmd: string, args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    // The scripts read TANDEM_* defaults: give them only what the test means them to see.
    const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TANDEM_'))) as Record<string, string>;
    execFile(cmd, args, { timeout: 60_000, env: { ...base, ...env } }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
        return;
      }
      resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
  });
}

/** examples/python/SCRIPT ARGS with Debian's Python and the stubs in `stubs` (no bytecode written into the repository). */
const runScript = (stubs: string, script: string, args: readonly string[]): Promise<Run> =>
  run(PYTHON, [join(EXAMPLES, script), ...args], { TANDEM_PY_STUBS: stubs, PYTHONDONTWRITEBYTECODE: '1' });

/** What a successful run must look like; otherwise fails showing its output. */
function ok(r: Run): string {
  if (r.code !== 0) throw new Error(`exit code ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  return r.stdout;
}

/** The Debian packages the example needs, as one clear failure (CI installs them: .ci/run). */
async function requirePythonToolchain(): Promise<void> {
  const missing: string[] = [];
  const probe = await run(PYTHON, ['-c', 'import grpc, google.protobuf, numpy']).catch((err: Error) => ({ code: -1, stdout: '', stderr: err.message }));
  if (probe.code !== 0) missing.push(`${PYTHON} cannot import grpc, google.protobuf and numpy (${probe.stderr.trim().split('\n').pop() ?? ''})`);
  for (const bin of ['protoc', 'grpc_python_plugin']) {
    const found = await run('sh', ['-c', `command -v ${bin}`]);
    if (found.code !== 0) missing.push(`${bin} is not on PATH`);
  }
  if (missing.length > 0) {
    throw new Error(
      `the Python example needs Debian's python3-grpcio, python3-protobuf, python3-numpy, protobuf-compiler and protobuf-compiler-grpc ` +
        `(apt-get install -y python3-grpcio python3-protobuf python3-numpy protobuf-compiler protobuf-compiler-grpc): ${missing.join('; ')}`,
    );
  }
}

/** `token INDEX ID ...` lines of a script's output, as ids in index order. */
function streamedIds(stdout: string): number[] {
  const lines = stdout.split('\n').filter((l) => l.startsWith('token '));
  return lines.map((l, i) => {
    const [, index, id] = l.split(' ');
    expect(Number(index)).toBe(i);
    return Number(id);
  });
}

/** The value of the `NAME ...` line of a script's output. */
function field(stdout: string, name: string): string {
  const line = stdout.split('\n').find((l) => l.startsWith(`${name} `));
  if (line === undefined) throw new Error(`no '${name}' line in:\n${stdout}`);
  return line.slice(name.length + 1);
}

describe('examples/python against the real services', () => {
  let creds: TestCredentials;
  let stack: OneDevice;
  let stubs: string;

  /** A script's --addr of `service`, the TLS flags every script gets, and the token of `id` (the operator's when omitted). */
  const to = (service: keyof OneDevice['addrs'], id?: string): string[] => ['--addr', stack.addrs[service], ...creds.cliFlags(id)];
  const py = (script: string, args: readonly string[]): Promise<Run> => runScript(stubs, script, args);
  const viaTs = (req: Partial<GenerateRequest>): Promise<number[]> =>
    generateVia(stack.client, { input: { $case: 'ids', value: { ids: PROMPT_IDS } }, maxNewTokens: NEW_TOKENS, placement: '', ...req }).then((r) => r.ids);

  beforeAll(async () => {
    await requirePythonToolchain();
    stubs = mkdtempSync(join(tmpdir(), 'tandem-py-stubs-'));
    ok(await run('bash', [join(EXAMPLES, 'gen.sh'), stubs]));

    creds = makeCredentials({ agents: ['dev-1'], executors: ['exec'], clients: ['py-1'] });
    stack = await startOneDevice(log, creds, { clientId: 'dev-1', cls: { expectedNewTokens: NEW_TOKENS } });
  });

  afterAll(async () => {
    await stack?.stop();
    creds?.remove();
    if (stubs) rmSync(stubs, { recursive: true, force: true });
  });

  it('generate.py streams the same tokens through the agent as the TypeScript client, for text and for ids', async () => {
    const text = await py('generate.py', [...to('agent', 'dev-1'), '--prompt', 'Hello world, this is', '--max-new-tokens', String(NEW_TOKENS)]);
    const expectedText = await generateVia(stack.client, {
      input: { $case: 'prompt', value: 'Hello world, this is' },
      maxNewTokens: NEW_TOKENS,
      placement: '',
    });
    const out = ok(text);
    expect(streamedIds(out)).toEqual(expectedText.ids);
    expect(field(out, 'ids')).toBe(expectedText.ids.join(','));
    expect(JSON.parse(field(out, 'text'))).toBe(expectedText.summary.text);
    expect(field(out, 'summary')).toMatch(new RegExp(`^placement=[CS]{${stack.stageCount}} epoch=\\d+ `));

    const ids = ok(await py('generate.py', [...to('agent'), '--ids', PROMPT_IDS.join(','), '--max-new-tokens', String(NEW_TOKENS), '--json']));
    const doc = JSON.parse(ids) as { ids: number[]; tokens: { id: number }[] };
    expect(doc.ids).toEqual(await viaTs({}));
    expect(doc.tokens.map((t) => t.id)).toEqual(doc.ids);
  });

  it('split.py, with its own stages in numpy, gives the all-server tokens (client blocks 0 and 1, head here or on the server)', async () => {
    const allServer = await viaTs({ placement: 'S'.repeat(stack.stageCount) });
    expect(allServer).toHaveLength(NEW_TOKENS);
    const cases: [string[], string][] = [
      [['--client-blocks', '1'], `CCC${'S'.repeat(stack.stageCount - 4)}C`],
      [['--client-blocks', '0'], `C${'S'.repeat(stack.stageCount - 2)}C`],
      [['--client-blocks', '1', '--server-head'], `CCC${'S'.repeat(stack.stageCount - 3)}`],
    ];
    for (const [flags, placement] of cases) {
      const out = ok(
        await py('split.py', [
          ...to('executor', 'py-1'),
          '--client-id',
          'py-1',
          '--model',
          stack.model.dir,
          '--ids',
          PROMPT_IDS.join(','),
          '--max-new-tokens',
          String(NEW_TOKENS),
          ...flags,
        ]),
      );
      expect({ flags, ids: streamedIds(out) }).toEqual({ flags, ids: allServer });
      expect(field(out, 'placement')).toBe(placement);
      expect(field(out, 'summary')).toMatch(new RegExp(`^steps=${NEW_TOKENS} `));
    }
  });

  it('watch_plans.py prints the plan the planner pushes to the agent', async () => {
    const out = ok(await py('watch_plans.py', [...to('planner', 'dev-1'), '--client-id', 'dev-1', '--count', '1', '--deadline-s', '30']));
    const plan = field(out, 'plan');
    expect(plan).toMatch(/^client=dev-1 epoch=[1-9]\d* algorithm=\S+ created_unix_ms=\d+ classes=1$/);
    expect(out).toMatch(new RegExp(`\\n  class short max_prompt_tokens=16 expected_new_tokens=${NEW_TOKENS} placement=[CS]{${stack.stageCount}} `));
  });

  it('reports a gRPC error as its status code and message, without a stack trace', async () => {
    const noToken = await py('generate.py', [
      '--addr',
      stack.addrs.agent,
      '--tls-ca',
      creds.certs.caCert,
      '--tls-cert',
      creds.certs.clientCert,
      '--tls-key',
      creds.certs.clientKey,
      '--ids',
      '1,2',
    ]);
    expect(noToken.code).toBe(1);
    expect(noToken.stderr).toMatch(/generate\.py: the client-agent at 127\.0\.0\.1:\d+: Generate failed with UNAUTHENTICATED: .*authorization/);
    expect(noToken.stderr).not.toContain('Traceback');

    // A token of py-1 cannot open a session as dev-1 nor watch dev-1's plans.
    const otherId = await py('split.py', [
      ...to('executor', 'py-1'),
      '--client-id',
      'dev-1',
      '--model',
      stack.model.dir,
      '--ids',
      '1,2',
      '--max-new-tokens',
      '2',
    ]);
    expect(otherId.code).toBe(1);
    expect(otherId.stderr).toMatch(/split\.py: the server-executor at 127\.0\.0\.1:\d+: Session failed with PERMISSION_DENIED: /);
    const watch = await py('watch_plans.py', [...to('planner', 'py-1'), '--client-id', 'dev-1', '--count', '1']);
    expect(watch.code).toBe(1);
    expect(watch.stderr).toMatch(/watch_plans\.py: the planner at 127\.0\.0\.1:\d+: WatchPlans failed with PERMISSION_DENIED: /);

    // The agent refuses a bad request: exit 2, as the tandem CLI does for INVALID_ARGUMENT.
    const bad = await py('generate.py', [...to('agent'), '--ids', '1,2', '--placement', 'CS']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/Generate failed with INVALID_ARGUMENT: .*placement/);
    expect(`${otherId.stderr}${watch.stderr}${bad.stderr}`).not.toContain('Traceback');
  });

  it('refuses bad flags with exit code 2 and a line naming the flag', async () => {
    const cases: [string, string[], RegExp][] = [
      ['generate.py', ['--ids', '1,x'], /argument --ids: must be comma-separated non-negative integers, given '1,x'/],
      ['generate.py', ['--prompt', 'hi', '--max-new-tokens', '0'], /argument --max-new-tokens: must be 1\.\.\d+, given 0/],
      ['generate.py', ['--prompt', 'hi', '--tls-cert', '/nonexistent'], /argument --tls-key: needed with --tls-cert/],
      ['generate.py', ['--prompt', 'hi', '--tls-ca', '/nonexistent/ca.crt'], /argument --tls-ca: cannot read \/nonexistent\/ca\.crt/],
      ['split.py', ['--model', '/nonexistent', '--ids', '1'], /argument --model: \/nonexistent\/manifest\.json: cannot read/],
      ['split.py', ['--model', stack.model.dir, '--ids', '50257'], /argument --ids: ids must be 0\.\.50256 \(the model's vocabulary\), given 50257/],
      [
        'split.py',
        ['--model', stack.model.dir, '--ids', '1', '--client-blocks', '2'],
        /argument --client-blocks: must be 0\.\.1 \(the server runs at least one stage\), given 2/,
      ],
      [
        'split.py',
        ['--model', stack.model.dir, '--ids', '1', '--max-new-tokens', '1025'],
        /argument --max-new-tokens: prompt \(1\) \+ max-new-tokens \(1025\) - 1 must be <= the model's context 1024/,
      ],
      ['watch_plans.py', ['--client-id', ''], /argument --client-id: must not be empty/],
      ['watch_plans.py', ['--client-id', 'a', '--addr', 'nohostport'], /argument --addr: must be host:port, given 'nohostport'/],
    ];
    for (const [script, args, message] of cases) {
      const r = await py(script, args);
      expect({ script, args, code: r.code }).toEqual({ script, args, code: 2 });
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toContain('Traceback');
    }
  });
});

describe('examples/python against `tandem demo --stay`', () => {
  let cwd: string;
  let stubs: string;

  beforeAll(async () => {
    await requirePythonToolchain();
    stubs = mkdtempSync(join(tmpdir(), 'tandem-py-stubs-'));
    ok(await run('bash', [join(EXAMPLES, 'gen.sh'), stubs]));
    cwd = mkdtempSync(join(tmpdir(), 'tandem-py-demo-'));
  });

  afterAll(() => {
    if (stubs) rmSync(stubs, { recursive: true, force: true });
    if (cwd) rmSync(cwd, { recursive: true, force: true });
  });

  it('runs every script against the services the demo keeps up, which stop on SIGINT with the report', async () => {
    const child = spawn(
      process.execPath,
      [join(ROOT, 'tools/cli/bin/tandem.js'), 'demo', '--preset', 'tiny', '--tokens', '4', '--own-nats', '--stay', '--json'],
      {
        cwd,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString('utf8')));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString('utf8')));
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    try {
      const stay = await eventually(
        () =>
          /--stay: .*server-executor (\S+), planner (\S+), agents laptop (\S+), .*; model (\S+); TLS: --tls-ca (\S+) --tls-cert (\S+) --tls-key (\S+); .* in (\S+)$/m.exec(
            stderr,
          ) ?? (child.exitCode !== null ? new Error(stderr) : undefined),
        { timeoutMs: 60_000, intervalMs: 100, what: "the demo's --stay line" },
      ).catch((err: Error) => {
        throw new Error(`${err.message}; the demo's stderr:\n${stderr}`);
      });
      if (stay instanceof Error) throw new Error(`the demo exited before staying up:\n${stay.message}`);
      const [, executorAddr, plannerAddr, laptopAddr, modelDir, ca, cert, key, tokensFile] = stay;
      const tokens = new Map(
        readFileSync(tokensFile, 'utf8')
          .trim()
          .split('\n')
          .map((l) => l.split(' ').reverse() as [string, string]),
      );
      const tls = ['--tls-ca', ca, '--tls-cert', cert, '--tls-key', key];
      /** A script's --addr, the demo's TLS flags and the token of `id` ('*': the operator). */
      const to = (addr: string, id: string): string[] => ['--addr', addr, ...tls, '--token', tokens.get(id) ?? ''];
      const py = (script: string, args: readonly string[]): Promise<Run> => runScript(stubs, script, args);

      const gen = JSON.parse(ok(await py('generate.py', [...to(laptopAddr, '*'), '--prompt', 'The quick brown fox', '--max-new-tokens', '4', '--json']))) as {
        ids: number[];
      };
      // "The quick brown fox" in GPT-2 ids, the demo's prompt.
      const split = ok(
        await py('split.py', [
          ...to(executorAddr, 'laptop'),
          '--client-id',
          'laptop',
          '--model',
          modelDir,
          '--ids',
          '464,2068,7586,21831',
          '--max-new-tokens',
          '4',
        ]),
      );
      const plan = ok(await py('watch_plans.py', [...to(plannerAddr, 'laptop'), '--client-id', 'laptop', '--count', '1']));
      expect(plan).toMatch(/^plan client=laptop epoch=[1-9]/);

      child.kill('SIGINT');
      expect(await exited).toBe(0);
      const report = JSON.parse(stdout) as DemoReport;
      const demoIds = report.agents[0].runs[0].ids;
      expect(demoIds).toHaveLength(4);
      expect(gen.ids).toEqual(demoIds);
      expect(streamedIds(split)).toEqual(demoIds);
      for (const s of report.services)
        expect({ service: s.name, listening: await canConnect('127.0.0.1', s.port, 2000) }).toEqual({ service: s.name, listening: false });
    } finally {
      if (child.exitCode === null) {
        child.kill('SIGINT');
        const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(t);
      }
    }
  }, 120_000);
});
