import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Linter } from 'eslint';
import tseslint from 'typescript-eslint';
import { boundariesPlugin, readProjects } from '../boundaries.cjs';

/** A workspace of its own: one project per type, each a package.json with its nx tag. */
const PROJECTS: Record<string, string> = {
  'libs/util': 'type:util',
  'libs/dp': 'type:algo',
  'libs/protocol': 'type:protocol',
  'libs/model': 'type:platform',
  'libs/testkit': 'type:testkit',
  'apps/planner': 'type:app',
  'apps/agent': 'type:app',
  'tools/launcher': 'type:harness',
  'tools/cli': 'type:tool',
  e2e: 'type:e2e',
};

function workspace(projects: Record<string, string>): string {
  const root = mkdtempSync(path.join(tmpdir(), 'tandem-boundaries-'));
  for (const [dir, tag] of Object.entries(projects)) {
    mkdirSync(path.join(root, dir), { recursive: true });
    writeFileSync(path.join(root, dir, 'package.json'), JSON.stringify({ name: `@tandem/${path.basename(dir)}`, nx: { tags: [tag] } }));
  }
  return root;
}

describe('module boundaries (tools/eslint/boundaries.cjs)', () => {
  let root: string;
  let lint: (file: string, code: string) => string[];
  beforeAll(() => {
    root = workspace(PROJECTS);
    const linter = new Linter({ configType: 'flat', cwd: root });
    const config: Linter.Config[] = [
      {
        files: ['**/*.ts'],
        languageOptions: { parser: tseslint.parser },
        plugins: { tandem: boundariesPlugin(root) },
        rules: { 'tandem/module-boundaries': 'error', 'tandem/process-env': 'error' },
      },
    ];
    lint = (file, code) => linter.verify(code, config, path.join(root, file)).map((m) => `${m.line}: ${m.message}`);
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('lets each project type import the types its rule allows', () => {
    expect(lint('libs/dp/src/a.ts', "import { x } from '@tandem/util';\nimport { y } from './y';")).toEqual([]);
    expect(
      lint('libs/model/src/a.ts', "import { x } from '@tandem/protocol';\nimport { d } from '@tandem/dp';\nimport { readFileSync } from 'node:fs';"),
    ).toEqual([]);
    expect(lint('apps/planner/src/a.ts', "import { x } from '@tandem/model';\nimport * as grpc from '@grpc/grpc-js';")).toEqual([]);
    expect(
      lint('tools/cli/src/a.ts', "import { a } from '@tandem/planner';\nimport { t } from '@tandem/testkit';\nimport { l } from '@tandem/launcher';"),
    ).toEqual([]);
  });

  it('rejects an import of a project type the rule does not allow, naming both', () => {
    expect(lint('libs/dp/src/a.ts', "import { m } from '@tandem/model';")).toEqual(['1: a type:algo project may not import @tandem/model (type:platform)']);
    expect(lint('apps/planner/src/a.ts', "export { g } from '@tandem/agent';")).toEqual(['1: a type:app project may not import @tandem/agent (type:app)']);
    expect(lint('libs/protocol/src/a.ts', "const d = require('@tandem/dp');")).toEqual(['1: a type:protocol project may not import @tandem/dp (type:algo)']);
    expect(lint('libs/util/src/a.ts', "type T = import('@tandem/protocol').Msg;")).toEqual([
      '1: a type:util project may not import @tandem/protocol (type:protocol)',
    ]);
  });

  it('lets tests, and only tests, import the testkit', () => {
    expect(lint('apps/planner/src/a.ts', "import { eventually } from '@tandem/testkit';")).toEqual([
      '1: a type:app project may not import @tandem/testkit (type:testkit)',
    ]);
    expect(lint('apps/planner/src/a.spec.ts', "import { eventually } from '@tandem/testkit';")).toEqual([]);
    expect(lint('apps/planner/test/a.ts', "import { eventually } from '@tandem/testkit';")).toEqual([]);
  });

  it('rejects banned external modules outside tests, prefixes included', () => {
    expect(
      lint(
        'libs/dp/src/a.ts',
        "import { readFileSync } from 'node:fs';\nimport pino from 'pino';\nimport * as ort from 'onnxruntime-node';\nimport * as grpc from '@grpc/grpc-js';\nimport('child_process');",
      ),
    ).toEqual([
      "1: a type:algo project may not import 'node:fs'",
      "2: a type:algo project may not import 'pino'",
      "3: a type:algo project may not import 'onnxruntime-node'",
      "4: a type:algo project may not import '@grpc/grpc-js'",
      "5: a type:algo project may not import 'child_process'",
    ]);
    expect(lint('libs/protocol/src/a.ts', "import { connect } from '@nats-io/transport-node';\nimport * as grpc from '@grpc/grpc-js';")).toEqual([
      "1: a type:protocol project may not import '@nats-io/transport-node'",
    ]);
    // 'pino' bans pino and its subpaths, not a module whose name merely starts with it.
    expect(lint('libs/util/src/a.ts', "import 'pino/file';\nimport 'pinot';")).toEqual(["1: a type:util project may not import 'pino/file'"]);
    expect(lint('libs/dp/src/a.spec.ts', "import { readFileSync } from 'node:fs';")).toEqual([]);
  });

  it('rejects deep imports, unknown projects and relative imports leaving the project', () => {
    expect(lint('apps/planner/src/a.ts', "import { x } from '@tandem/model/src/runner';")).toEqual([
      "1: deep import '@tandem/model/src/runner'; import '@tandem/model'",
    ]);
    expect(lint('apps/planner/src/a.ts', "import { x } from '@tandem/nope';")).toEqual(["1: unknown project '@tandem/nope'"]);
    expect(lint('apps/planner/src/a.ts', "import { x } from '../../agent/src/x';")).toEqual([
      "1: relative import '../../agent/src/x' leaves apps/planner; import the project by its package name",
    ]);
    expect(lint('apps/planner/test/a.ts', "import { x } from '../src/x';")).toEqual([]);
  });

  it('allows process.env only in config.ts, main.ts, tests, the testkit, tools, harnesses and e2e', () => {
    const read = 'export const home = process.env.HOME;';
    expect(lint('apps/planner/src/a.ts', read)).toEqual([
      '1: reads process.env outside config.ts (a type:app project reads its environment in config.ts or main.ts only)',
    ]);
    expect(lint('libs/model/src/a.ts', "export const home = process['env'].HOME;")).toHaveLength(1);
    for (const file of [
      'apps/planner/src/config.ts',
      'apps/planner/src/main.ts',
      'apps/planner/src/a.spec.ts',
      'libs/testkit/src/a.ts',
      'tools/cli/src/a.ts',
      'tools/launcher/src/a.ts',
      'e2e/a.ts',
    ]) {
      expect(lint(file, read)).toEqual([]);
    }
  });

  it('leaves files outside every project and generated code alone', () => {
    expect(lint('tools/scripts/a.ts', "import { m } from '@tandem/nope';")).toEqual([]);
    expect(lint('libs/protocol/src/generated/a.ts', "import { connect } from '@nats-io/transport-node';")).toEqual([]);
  });

  it('refuses a project without a known type tag, naming its package.json', () => {
    const bad = workspace({ 'libs/odd': 'scope:odd' });
    try {
      expect(() => readProjects(bad)).toThrow(
        'libs/odd/package.json: nx.tags must contain one of type:util, type:algo, type:protocol, type:platform, type:testkit, type:app, type:harness, type:tool, type:e2e, given undefined',
      );
    } finally {
      rmSync(bad, { recursive: true, force: true });
    }
  });

  it("holds for this workspace's own projects", () => {
    const projects = readProjects(path.join(__dirname, '../../..'));
    expect(projects.find((p) => p.name === '@tandem/dp')?.tag).toBe('type:algo');
    expect(projects.length).toBeGreaterThanOrEqual(17);
  });
});
