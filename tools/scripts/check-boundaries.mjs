#!/usr/bin/env node
// Module-boundary lint: reads every project's tag from its package.json ("nx.tags") and
// checks each TypeScript import against the rules below. Exits 1 listing every violation.
import { readFileSync, readdirSync, statSync, existsSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

const root = process.cwd();
const projects = [];
const dirs = ['e2e'];
for (const group of ['libs', 'apps', 'tools']) for (const name of readdirSync(join(root, group))) dirs.push(join(group, name));
for (const dir of dirs) {
  const pj = join(root, dir, 'package.json');
  if (!existsSync(pj)) continue;
  const pkg = JSON.parse(readFileSync(pj, 'utf8'));
  const tag = (pkg.nx?.tags ?? []).find((t) => t.startsWith('type:'));
  projects.push({ dir, name: pkg.name, tag });
}
const byName = new Map(projects.map((p) => [p.name, p]));

const IO = ['@grpc/', '@nats-io/', 'nats', 'onnxruntime-', 'pino', 'node:fs', 'node:net', 'fs', 'net', 'node:child_process', 'child_process'];
/**
 * tag → { allowed: project tags it may import, banned: external import prefixes }. util: small
 * dependency-free helpers anyone may import; harness: what runs the services on this machine
 * (launcher, demo, load test, simulator) for the tools and the end-to-end tests.
 */
const RULES = {
  'type:util': { allowed: [], banned: IO },
  'type:algo': { allowed: ['type:util'], banned: IO },
  'type:protocol': { allowed: ['type:util'], banned: ['@nats-io/', 'nats', 'onnxruntime-', 'pino'] },
  'type:platform': { allowed: ['type:protocol', 'type:algo', 'type:util'], banned: [] },
  'type:testkit': { allowed: ['type:protocol', 'type:platform', 'type:util'], banned: [] },
  'type:app': { allowed: ['type:protocol', 'type:algo', 'type:platform', 'type:util'], banned: [] },
  'type:harness': { allowed: ['type:protocol', 'type:algo', 'type:platform', 'type:testkit', 'type:app', 'type:util', 'type:harness'], banned: [] },
  'type:tool': { allowed: ['type:protocol', 'type:algo', 'type:platform', 'type:testkit', 'type:app', 'type:util', 'type:harness'], banned: [] },
  'type:e2e': { allowed: ['type:protocol', 'type:algo', 'type:platform', 'type:testkit', 'type:app', 'type:util', 'type:harness'], banned: [] },
};

function* tsFiles(dir) {
  for (const e of readdirSync(dir)) {
    if (e === 'node_modules' || e === 'generated') continue;
    const p = join(dir, e);
    if (statSync(p).isDirectory()) yield* tsFiles(p);
    else if (p.endsWith('.ts')) yield p;
  }
}

const problems = [];
const importRe = /(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|require\(\s*['"]([^'"]+)['"]\s*\)|import\(\s*['"]([^'"]+)['"]\s*\)/g;
for (const p of projects) {
  const rule = RULES[p.tag];
  if (!rule) { problems.push(`${p.dir}/package.json: nx.tags must contain one of ${Object.keys(RULES).join(', ')}, given ${JSON.stringify(p.tag)}`); continue; }
  for (const file of tsFiles(join(root, p.dir))) {
    const rel = relative(root, file);
    const isTest = /\.spec\.ts$|[\\/]test[\\/]/.test(rel);
    const src = readFileSync(file, 'utf8');
    for (const m of src.matchAll(importRe)) {
      const spec = m[1] ?? m[2] ?? m[3];
      if (spec.startsWith('.')) {
        const target = relative(root, join(file, '..', spec));
        if (!target.startsWith(p.dir + sep) && target !== p.dir) problems.push(`${rel}: relative import '${spec}' leaves ${p.dir}; import the project by its package name`);
        continue;
      }
      if (spec.startsWith('@tandem/')) {
        const [scope, name, ...deep] = spec.split('/');
        const target = byName.get(`${scope}/${name}`);
        if (deep.length) problems.push(`${rel}: deep import '${spec}'; import '${scope}/${name}'`);
        if (!target) { problems.push(`${rel}: unknown project '${spec}'`); continue; }
        if (target.name === p.name) continue;
        const ok = rule.allowed.includes(target.tag) || (isTest && target.tag === 'type:testkit');
        if (!ok) problems.push(`${rel}: a ${p.tag} project may not import ${target.name} (${target.tag})`);
        continue;
      }
      if (!isTest && rule.banned.some((b) => spec === b || spec.startsWith(b.endsWith('/') || b.endsWith('-') ? b : `${b}/`))) {
        problems.push(`${rel}: a ${p.tag} project may not import '${spec}'`);
      }
    }
    if (!['type:tool', 'type:harness', 'type:e2e'].includes(p.tag) && !isTest && /process\.env\b/.test(src) && !/[\\/](config|main)\.ts$/.test(rel) && !rel.startsWith('libs/testkit')) {
      problems.push(`${rel}: reads process.env outside config.ts`);
    }
  }
}
if (problems.length) {
  console.error(problems.join('\n'));
  console.error(`lint: ${problems.length} boundary violation(s)`);
  process.exit(1);
}
console.log(`lint: ${projects.length} projects, module boundaries ok`);
