#!/usr/bin/env node
// Validates Kubernetes manifests offline against the API's schemas: every document of every
// .yaml file in the directories given (default deploy/k8s) is checked by the model class of its
// apiVersion and kind from kubernetes-models (the OpenAPI schemas of Kubernetes 1.x compiled to
// validators, no cluster or download needed): required fields, types, enums and formats.
// It does not catch fields the schema does not know (kubectl's strict mode would): the tests of
// deploy/ (tools/launcher/test/deploy.spec.ts) check the fields that matter by name.
//
//   node tools/scripts/validate-k8s.mjs [DIR...]
//
// Prints one line per problem (file, document, kind/name, the path and the rule) and exits 1
// when there is any; otherwise prints how many objects it checked and exits 0.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const dirs = process.argv.slice(2);
if (dirs.length === 0) dirs.push(join(root, 'deploy/k8s'));

/** The kubernetes-models module of an apiVersion: 'v1' is the core group, 'apps/v1' a named one. */
const moduleOf = (apiVersion) => `kubernetes-models/${apiVersion}`;

const problems = [];
let checked = 0;
for (const dir of dirs) {
  let files;
  try {
    files = statSync(dir).isDirectory()
      ? readdirSync(dir)
          .filter((f) => /\.ya?ml$/.test(f))
          .sort()
          .map((f) => join(dir, f))
      : [dir];
  } catch (err) {
    problems.push(`${dir}: cannot be read (${err.code ?? err.message})`);
    continue;
  }
  if (files.length === 0) problems.push(`${dir}: holds no .yaml file`);
  for (const file of files) {
    const name = relative(process.cwd(), file) || file;
    // Kubernetes reads manifests as YAML 1.1 (sigs.k8s.io/yaml): 0400 is octal there.
    const docs = parseAllDocuments(readFileSync(file, 'utf8'), { version: '1.1' });
    for (const [i, doc] of docs.entries()) {
      const where = `${name} document ${i + 1}`;
      if (doc.errors.length) {
        problems.push(`${where}: not YAML: ${doc.errors[0].message.split('\n')[0]}`);
        continue;
      }
      const obj = doc.toJS();
      if (obj === null || obj === undefined) continue;
      if (typeof obj !== 'object' || Array.isArray(obj)) {
        problems.push(`${where}: must be a mapping (a Kubernetes object), given ${JSON.stringify(obj).slice(0, 60)}`);
        continue;
      }
      const { apiVersion, kind } = obj;
      const label = `${where} (${kind ?? '?'} ${obj.metadata?.name ?? '?'})`;
      if (typeof apiVersion !== 'string' || typeof kind !== 'string') {
        problems.push(`${label}: apiVersion and kind must be strings, given ${JSON.stringify(apiVersion)} and ${JSON.stringify(kind)}`);
        continue;
      }
      let mod;
      try {
        mod = await import(moduleOf(apiVersion));
      } catch {
        problems.push(`${label}: apiVersion must be one Kubernetes serves, given '${apiVersion}'`);
        continue;
      }
      const Model = mod[kind];
      if (typeof Model !== 'function') {
        problems.push(`${label}: kind must be one of ${apiVersion}'s, given '${kind}'`);
        continue;
      }
      try {
        new Model(obj).validate();
        checked++;
      } catch (err) {
        for (const line of String(err.message)
          .split('\n')
          .filter((l) => l.trim() !== ''))
          problems.push(`${label}: ${line.trim()}`);
      }
    }
  }
}
if (problems.length) {
  for (const p of problems) console.error(`validate-k8s: ${p}`);
  console.error(`validate-k8s: ${problems.length} problem${problems.length > 1 ? 's' : ''}`);
  process.exit(1);
}
console.log(`validate-k8s: ${checked} objects valid in ${dirs.map((d) => relative(process.cwd(), d) || d).join(', ')}`);
