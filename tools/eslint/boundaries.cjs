'use strict';
// Module boundaries of the workspace as ESLint rules (eslint.config.mjs turns them on for every
// TypeScript file). Each project's type is the `type:` tag in its package.json ("nx.tags"); the
// table below says which project types and which external modules each type may import. nx's
// own @nx/enforce-module-boundaries is not used: its plugin has no release for nx 24 (it pulls
// a second nx, 23.x, into the tree) and it does not see built-in modules (`node:fs`), deep
// imports of workspace packages or test-only imports; docs/architecture.md ("Lint and format").
const { existsSync, readdirSync, readFileSync } = require('node:fs');
const path = require('node:path');

/** External modules with I/O: banned where a project must stay pure. A prefix ends with '/' or '-'. */
const IO = ['@grpc/', '@nats-io/', 'nats', 'onnxruntime-', 'pino', 'node:fs', 'node:net', 'fs', 'net', 'node:child_process', 'child_process'];
const ALL = ['type:protocol', 'type:algo', 'type:platform', 'type:testkit', 'type:app', 'type:util', 'type:harness'];

/**
 * tag → { allowed: project tags it may import, banned: external modules it may not import
 * outside its tests }. util: small dependency-free helpers anyone may import; harness: what
 * runs the services on this machine (launcher, demo, load test, simulator) for the tools and
 * the end-to-end tests. Any project may import `type:testkit` from its tests (`*.spec.ts`,
 * `test/`).
 */
const RULES = {
  'type:util': { allowed: [], banned: IO },
  'type:algo': { allowed: ['type:util'], banned: IO },
  'type:protocol': { allowed: ['type:util'], banned: ['@nats-io/', 'nats', 'onnxruntime-', 'pino'] },
  'type:platform': { allowed: ['type:protocol', 'type:algo', 'type:util'], banned: [] },
  'type:testkit': { allowed: ['type:protocol', 'type:platform', 'type:util'], banned: [] },
  'type:app': { allowed: ['type:protocol', 'type:algo', 'type:platform', 'type:util'], banned: [] },
  'type:harness': { allowed: ALL, banned: [] },
  'type:tool': { allowed: ALL, banned: [] },
  'type:e2e': { allowed: ALL, banned: [] },
};

/** Project types whose every file may read `process.env` (elsewhere only `config.ts`, `main.ts`, tests and libs/testkit may). */
const ENV_ANYWHERE = ['type:tool', 'type:harness', 'type:e2e'];

/**
 * The workspace's projects under `root`: `e2e` and every folder of libs/, apps/ and tools/ with a
 * package.json. Throws naming the file when a project has no `type:` tag of RULES.
 */
function readProjects(root) {
  const dirs = ['e2e'];
  for (const group of ['libs', 'apps', 'tools']) {
    if (existsSync(path.join(root, group))) for (const name of readdirSync(path.join(root, group)).sort()) dirs.push(path.join(group, name));
  }
  const projects = [];
  for (const dir of dirs) {
    const pj = path.join(root, dir, 'package.json');
    if (!existsSync(pj)) continue;
    const pkg = JSON.parse(readFileSync(pj, 'utf8'));
    const tag = ((pkg.nx && pkg.nx.tags) || []).find((t) => t.startsWith('type:'));
    if (!(tag in RULES)) throw new Error(`${dir}/package.json: nx.tags must contain one of ${Object.keys(RULES).join(', ')}, given ${JSON.stringify(tag)}`);
    projects.push({ dir, name: pkg.name, tag });
  }
  return projects;
}

/** The file's project and facts about the file, or undefined for a file outside every project (root scripts, tools/scripts) or generated code. */
function locate(root, projects, filename) {
  const rel = path.relative(root, filename);
  if (rel.split(path.sep).some((part) => part === 'generated' || part === 'node_modules')) return undefined;
  const project = projects.find((p) => rel.startsWith(p.dir + path.sep));
  if (!project) return undefined;
  return { project, rel, isTest: /\.spec\.ts$|[\\/]test[\\/]/.test(rel) };
}

/** Whether `spec` is `banned` itself or under it ('@grpc/' and 'onnxruntime-' are prefixes, 'pino' covers 'pino/file'). */
const isBanned = (spec, banned) => banned.some((b) => spec === b || spec.startsWith(b.endsWith('/') || b.endsWith('-') ? b : `${b}/`));

/** The module name of an import-like node, or undefined when it names none statically. */
function moduleOf(node) {
  switch (node.type) {
    case 'ImportDeclaration':
    case 'ExportAllDeclaration':
    case 'ExportNamedDeclaration':
      return node.source ? node.source.value : undefined;
    case 'ImportExpression':
      return node.source.type === 'Literal' && typeof node.source.value === 'string' ? node.source.value : undefined;
    case 'CallExpression': {
      const [arg] = node.arguments;
      const isRequire = node.callee.type === 'Identifier' && node.callee.name === 'require';
      return isRequire && arg && arg.type === 'Literal' && typeof arg.value === 'string' ? arg.value : undefined;
    }
    case 'TSImportEqualsDeclaration':
      return node.moduleReference.type === 'TSExternalModuleReference' ? node.moduleReference.expression.value : undefined;
    case 'TSImportType':
      return node.source && typeof node.source.value === 'string' ? node.source.value : undefined;
    default:
      return undefined;
  }
}

/** The problem with importing `spec` from the located file, or undefined when it may. */
function importProblem(root, byName, at, filename, spec) {
  const { project, isTest } = at;
  if (spec.startsWith('.')) {
    const target = path.relative(root, path.join(filename, '..', spec));
    if (!target.startsWith(project.dir + path.sep) && target !== project.dir)
      return `relative import '${spec}' leaves ${project.dir}; import the project by its package name`;
    return undefined;
  }
  if (spec.startsWith('@tandem/')) {
    const [scope, name, ...deep] = spec.split('/');
    const problems = [];
    if (deep.length) problems.push(`deep import '${spec}'; import '${scope}/${name}'`);
    const target = byName.get(`${scope}/${name}`);
    if (!target) problems.push(`unknown project '${spec}'`);
    else if (target.name !== project.name && !RULES[project.tag].allowed.includes(target.tag) && !(isTest && target.tag === 'type:testkit')) {
      problems.push(`a ${project.tag} project may not import ${target.name} (${target.tag})`);
    }
    return problems.length ? problems.join('; ') : undefined;
  }
  if (!isTest && isBanned(spec, RULES[project.tag].banned)) return `a ${project.tag} project may not import '${spec}'`;
  return undefined;
}

/**
 * The plugin for the workspace at `root` (read once: its projects and their tags), with rules
 * `module-boundaries` (every import checked against RULES) and `process-env` (`process.env`
 * read only by config.ts, main.ts, tests, libs/testkit and tools).
 */
function boundariesPlugin(root) {
  const projects = readProjects(root);
  const byName = new Map(projects.map((p) => [p.name, p]));
  /** A rule of kind 'problem' without options: in a file of a workspace project, `listen(context, at)` (at: locate's answer) gives its listeners; elsewhere it has none. */
  const rule = (description, messages, listen) => ({
    meta: { type: 'problem', docs: { description }, messages, schema: [] },
    create(context) {
      const at = locate(root, projects, context.filename);
      return at ? listen(context, at) : {};
    },
  });
  const moduleBoundaries = rule(
    'Imports follow the project types of tools/eslint/boundaries.cjs (nx.tags in each package.json)',
    { boundary: '{{problem}}' },
    (context, at) => {
      const check = (node) => {
        const spec = moduleOf(node);
        if (spec === undefined) return;
        const problem = importProblem(root, byName, at, context.filename, spec);
        if (problem) context.report({ node, messageId: 'boundary', data: { problem } });
      };
      return {
        ImportDeclaration: check,
        ExportAllDeclaration: check,
        ExportNamedDeclaration: check,
        ImportExpression: check,
        CallExpression: check,
        TSImportEqualsDeclaration: check,
        TSImportType: check,
      };
    },
  );
  const processEnv = rule(
    'Only config.ts and main.ts of a service read process.env',
    { env: 'reads process.env outside config.ts (a {{tag}} project reads its environment in config.ts or main.ts only)' },
    (context, at) => {
      if (at.isTest || ENV_ANYWHERE.includes(at.project.tag) || /[\\/](config|main)\.ts$/.test(at.rel) || at.project.dir === path.join('libs', 'testkit'))
        return {};
      return {
        MemberExpression(node) {
          const isProcess = node.object.type === 'Identifier' && node.object.name === 'process';
          const isEnv = node.computed ? node.property.type === 'Literal' && node.property.value === 'env' : node.property.name === 'env';
          if (isProcess && isEnv) context.report({ node, messageId: 'env', data: { tag: at.project.tag } });
        },
      };
    },
  );
  return { meta: { name: 'tandem-boundaries' }, rules: { 'module-boundaries': moduleBoundaries, 'process-env': processEnv } };
}

module.exports = { boundariesPlugin, readProjects, RULES };
