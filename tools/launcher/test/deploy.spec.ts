import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { agentEnv } from '@tandem/client-agent';
import { plannerEnv } from '@tandem/planner';
import { executorEnv } from '@tandem/server-executor';
import { loadEnv, natsPasswordVar, type EnvSchema } from '@tandem/service-kit';
import { REPO_ROOT } from '../src/service';

// deploy/: the compose file and the Kubernetes manifests, checked without an engine or a
// cluster: by their own validators (docker-compose's `config`, the API schemas) and against
// each app's environment schema and the topology they describe.

const DEPLOY = join(REPO_ROOT, 'deploy');
type App = 'server-executor' | 'planner' | 'client-agent';
const SCHEMA: Record<App, EnvSchema> = { 'server-executor': executorEnv, planner: plannerEnv, 'client-agent': agentEnv };
/** The gRPC service each app answers health checks for, and the variable of its listen address. */
const HEALTH: Record<App, { service: string; addrVar: string }> = {
  'server-executor': { service: 'tandem.executor.v1.ExecutorService', addrVar: 'EXECUTOR_ADDR' },
  planner: { service: 'tandem.planner.v1.PlannerService', addrVar: 'PLANNER_ADDR' },
  'client-agent': { service: 'tandem.agent.v1.AgentService', addrVar: 'AGENT_ADDR' },
};
const appOf = (command: unknown): App | undefined => {
  const m = /^dist\/apps\/(server-executor|planner|client-agent)\/src\/main\.js$/.exec(Array.isArray(command) ? String(command[0]) : '');
  return m ? (m[1] as App) : undefined;
};
const portOf = (addr: string): string => addr.slice(addr.lastIndexOf(':') + 1);

/** Problems of one service's environment: a variable its app does not read, or a value its schema refuses. */
function envProblems(app: App, env: Record<string, string>): string[] {
  const schema = SCHEMA[app];
  const unknown = Object.keys(env).filter((k) => !(k in schema));
  const problems = unknown.map((k) => `${k} is not a variable of the ${app}`);
  try {
    loadEnv(schema, env);
  } catch (err) {
    problems.push((err as Error).message);
  }
  return problems;
}

describe('deploy/docker-compose.yml', () => {
  const file = join(DEPLOY, 'docker-compose.yml');
  const text = readFileSync(file, 'utf8');
  const passwords = Object.fromEntries(
    readFileSync(join(DEPLOY, 'nats.env.example'), 'utf8')
      .split('\n')
      .filter((l) => /^[A-Z0-9_]+=/.test(l))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  /** `${VAR:?message}` and `${VAR}` as compose fills them from deploy/.env (here: the example). */
  const interpolate = (v: unknown): string =>
    String(v).replace(/\$\{([A-Z0-9_]+)(:\?[^}]*)?\}/g, (_m, name: string) => {
      if (!(name in passwords)) throw new Error(`${name} is used by docker-compose.yml but not in nats.env.example`);
      return passwords[name];
    });
  const compose = parse(text, { merge: true }) as { services: Record<string, { command?: unknown; environment?: Record<string, unknown>; ports?: string[] }> };
  const services = Object.entries(compose.services).flatMap(([name, s]) => {
    const app = appOf(s.command);
    return app ? [{ name, app, env: Object.fromEntries(Object.entries(s.environment ?? {}).map(([k, v]) => [k, interpolate(v)])), ports: s.ports ?? [] }] : [];
  });
  const of = (app: App): typeof services => services.filter((s) => s.app === app);

  it('is valid for docker-compose (`docker-compose config -q` with the example passwords) and a broken copy is not', () => {
    const check = (f: string): { status: number | null; stderr: string } => {
      const r = spawnSync('docker-compose', ['-f', f, '--env-file', join(DEPLOY, 'nats.env.example'), 'config', '-q'], { encoding: 'utf8', timeout: 60_000 });
      if (r.error) throw new Error(`docker-compose could not run (${r.error.message}): apt-get install docker-compose (.ci/run installs it)`);
      return { status: r.status, stderr: r.stderr };
    };
    expect(check(file)).toEqual({ status: 0, stderr: '' });
    const dir = mkdtempSync(join(tmpdir(), 'tandem-compose-'));
    try {
      const broken = join(dir, 'docker-compose.yml');
      writeFileSync(broken, text.replace('condition: service_completed_successfully', 'condition: finished'));
      const r = check(broken);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/depends_on\.model\.condition contains "finished"/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gives every service only variables its app reads, with values its schema accepts, and its own NATS user and password', () => {
    expect(services.map((s) => s.name).sort()).toEqual(['agent-1', 'agent-2', 'agent-3', 'executor-1', 'executor-2', 'planner']);
    const conf = readFileSync(join(DEPLOY, 'nats/nats-server.conf'), 'utf8');
    for (const s of services) {
      expect({ service: s.name, problems: envProblems(s.app, s.env) }).toEqual({ service: s.name, problems: [] });
      const user = s.env.NATS_USER;
      expect(conf).toContain(`{ user: "${user}", password: $${natsPasswordVar(user)},`);
      expect(text).toContain(`NATS_USER: ${user}\n      NATS_PASSWORD: \${${natsPasswordVar(user)}:?`);
    }
    const hostPorts = services.flatMap((s) => s.ports.map((p) => p.split(':')[0]));
    expect(new Set(hostPorts).size).toBe(hostPorts.length);
  });

  it('runs two executors, each with its own id and NATS user, advertising its service name and port', () => {
    const execs = of('server-executor');
    expect(execs).toHaveLength(2);
    for (const e of execs) {
      expect(e.env.EXECUTOR_ID).toBe(e.name);
      expect(e.env.NATS_USER).toBe(e.name);
      expect(e.env.EXECUTOR_ADVERTISE_ADDR).toBe(`${e.name}:${portOf(e.env.EXECUTOR_ADDR)}`);
    }
  });

  it('runs three agents of different device classes, each falling back to an executor and following the planner', () => {
    const agents = of('client-agent');
    const [planner] = of('planner');
    const advertised = of('server-executor').map((e) => e.env.EXECUTOR_ADVERTISE_ADDR);
    expect(agents).toHaveLength(3);
    expect(new Set(agents.map((a) => a.env.AGENT_ID)).size).toBe(3);
    expect(new Set(agents.map((a) => a.env.AGENT_CLASS)).size).toBe(3);
    for (const a of agents) {
      expect(a.env.NATS_USER).toBe(a.env.AGENT_ID);
      expect(advertised).toContain(a.env.EXECUTOR_ADDR);
      expect(a.env.PLANNER_ADDR).toBe(`planner:${portOf(planner.env.PLANNER_ADDR)}`);
    }
  });
});

interface K8sContainer {
  name: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: unknown } }[];
  readinessProbe?: { grpc?: { port: number; service?: string } };
  livenessProbe?: { grpc?: { port: number; service?: string } };
  resources?: { requests?: { cpu?: string; memory?: string } };
  volumeMounts?: { name: string; mountPath: string }[];
}
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string };
  spec: {
    replicas?: number;
    serviceName?: string;
    clusterIP?: string;
    selector?: Record<string, unknown>;
    ports?: { port: number }[];
    template?: {
      metadata: { labels: Record<string, string> };
      spec: { terminationGracePeriodSeconds?: number; containers: K8sContainer[]; volumes?: { name: string; secret?: { secretName: string } }[] };
    };
  };
}

describe('deploy/k8s', () => {
  const dir = join(DEPLOY, 'k8s');
  const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
  const objects = files.flatMap((f) => parseAllDocuments(readFileSync(join(dir, f), 'utf8'), { version: '1.1' }).map((d) => d.toJS() as K8sObject));
  const workloads = objects.filter((o) => o.kind === 'Deployment' || o.kind === 'StatefulSet');
  const serviceApps = workloads.flatMap((w) => {
    const spec = w.spec.template?.spec;
    return (spec?.containers ?? []).flatMap((c) => {
      const app = appOf(c.args);
      return app ? [{ w, c, app, spec }] : [];
    });
  });
  const one = (app: App): (typeof serviceApps)[number] => {
    const found = serviceApps.filter((s) => s.app === app);
    expect(found).toHaveLength(1);
    return found[0];
  };
  /** A container's environment as the pod `pod` sees it ($(VAR) expanded; fields from the pod's metadata). */
  const envOf = (c: K8sContainer, pod: string): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const e of c.env ?? []) {
      const field = e.valueFrom?.fieldRef?.fieldPath;
      if (field !== undefined) out[e.name] = field === 'metadata.name' ? pod : field === 'metadata.namespace' ? 'tandem' : `<${field}>`;
      else if (e.value !== undefined)
        out[e.name] = e.value.replace(/\$\(([A-Z_]+)\)/g, (m, v: string) => {
          if (!(v in out)) throw new Error(`${c.name}: ${e.name} refers to $(${v}), which is not set before it`);
          return out[v];
        });
    }
    return out;
  };
  const podFields = ['POD_NAME', 'POD_NAMESPACE'];

  it('validates against the Kubernetes API schemas, and a broken manifest does not', () => {
    const validate = (target: string): { status: number | null; out: string } => {
      const r = spawnSync(process.execPath, [join(REPO_ROOT, 'tools/scripts/validate-k8s.mjs'), target], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000 });
      return { status: r.status, out: r.stdout + r.stderr };
    };
    const good = validate(dir);
    expect(good).toEqual({ status: 0, out: `validate-k8s: ${objects.length} objects valid in deploy/k8s\n` });
    const tmp = mkdtempSync(join(tmpdir(), 'tandem-k8s-'));
    try {
      writeFileSync(
        join(tmp, 'executor.yaml'),
        readFileSync(join(dir, 'executor.yaml'), 'utf8')
          .replace('replicas: 2', 'replicas: two')
          .replace('grpc: { port: 50051, service: tandem.executor.v1.ExecutorService }', 'grpc: { port: grpc, service: tandem.executor.v1.ExecutorService }'),
      );
      writeFileSync(join(tmp, 'typo.yaml'), 'apiVersion: apps/v1\nkind: Deploymnt\nmetadata: { name: x }\n');
      const bad = validate(tmp);
      expect(bad.status).toBe(1);
      expect(bad.out).toContain('(StatefulSet executor): data/spec/replicas must be integer');
      expect(bad.out).toContain('readinessProbe/grpc/port must be integer');
      expect(bad.out).toContain("typo.yaml document 1 (Deploymnt x): kind must be one of apps/v1's, given 'Deploymnt'");
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it("gives every service only its app's variables, gRPC health probes on its service name and port, and resource requests", () => {
    expect(serviceApps.map((s) => s.app).sort()).toEqual(['client-agent', 'planner', 'server-executor']);
    for (const { c, app } of serviceApps) {
      const env = envOf(c, `${c.name}-0`);
      const own = Object.fromEntries(Object.entries(env).filter(([k]) => !podFields.includes(k)));
      expect({ app, problems: envProblems(app, own) }).toEqual({ app, problems: [] });
      const port = Number(portOf(env[HEALTH[app].addrVar]));
      expect(c.readinessProbe?.grpc).toEqual({ port, service: HEALTH[app].service });
      expect(c.livenessProbe?.grpc).toEqual({ port, service: HEALTH[app].service });
      expect(c.resources?.requests?.cpu).toBeDefined();
      expect(c.resources?.requests?.memory).toBeDefined();
    }
  });

  it('keeps secrets out of the manifests: credentials come from Secrets the operator creates, never a literal value', () => {
    expect(objects.filter((o) => o.kind === 'Secret')).toEqual([]);
    const secretNames = new Set<string>();
    for (const w of workloads) {
      for (const c of w.spec.template?.spec.containers ?? [])
        for (const e of c.env ?? []) if (/PASSWORD|TOKEN/.test(e.name)) expect({ name: e.name, value: e.value }).toEqual({ name: e.name, value: undefined });
      for (const v of w.spec.template?.spec.volumes ?? []) if (v.secret) secretNames.add(v.secret.secretName);
    }
    expect([...secretNames].sort()).toEqual(['tandem-nats-agents', 'tandem-nats-executors', 'tandem-nats-planner', 'tandem-nats-server']);
    // The README says how to make each.
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    for (const s of secretNames) expect(readme).toContain(`kubectl create secret generic ${s}`);
    // Each service reads its own NKEY seed, named by its pod (the NATS user of the same name).
    for (const { c, app } of serviceApps) {
      const env = envOf(c, 'x-0');
      expect(env.NATS_NKEY_SEED_FILE).toBe(`/etc/tandem/nats/${app === 'planner' ? 'planner' : 'x-0'}.nk`);
      expect(c.volumeMounts).toContainEqual({ name: 'nats-credentials', mountPath: '/etc/tandem/nats', readOnly: true });
    }
  });

  it('runs executors as a StatefulSet behind a headless Service: each pod advertises its stable DNS name and has its own id, and may drain before it is killed', () => {
    const { w, c, spec } = one('server-executor');
    expect(w.kind).toBe('StatefulSet');
    const headless = objects.find((o) => o.kind === 'Service' && o.metadata.name === w.spec.serviceName);
    expect(headless?.spec.clusterIP).toBe('None');
    expect(w.spec.template?.metadata.labels).toMatchObject(headless?.spec.selector ?? { none: 'no selector' });
    const env = envOf(c, `${w.metadata.name}-1`);
    expect(env.EXECUTOR_ID).toBe(`${w.metadata.name}-1`);
    expect(env.EXECUTOR_ADVERTISE_ADDR).toBe(`${w.metadata.name}-1.${w.spec.serviceName}.tandem.svc.cluster.local:${portOf(env.EXECUTOR_ADDR)}`);
    const graceMs = loadEnv(executorEnv, env).EXECUTOR_SHUTDOWN_GRACE_MS;
    expect((spec?.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThanOrEqual(graceMs + 5000);
    expect(w.spec.replicas).toBeGreaterThanOrEqual(2);
  });

  it('runs two planners sharing a state bucket, and agents that reach the planner and the executors through Services', () => {
    const p = one('planner');
    expect(p.w.spec.replicas).toBe(2);
    const pEnv = envOf(p.c, 'planner-x');
    expect(loadEnv(plannerEnv, pEnv).PLANNER_STATE_BUCKET).not.toBe('off');
    const a = one('client-agent');
    const aEnv = envOf(a.c, 'agent-0');
    expect(aEnv.AGENT_ID).toBe('agent-0');
    const serviceAt = (addr: string): K8sObject | undefined =>
      objects.find((o) => o.kind === 'Service' && o.metadata.name === addr.split(':')[0] && (o.spec.ports ?? []).some((x) => String(x.port) === portOf(addr)));
    // The Services name their pods by labels the pods carry.
    expect(p.w.spec.template?.metadata.labels).toMatchObject(serviceAt(aEnv.PLANNER_ADDR)?.spec.selector ?? { none: 'no selector' });
    expect(one('server-executor').w.spec.template?.metadata.labels).toMatchObject(serviceAt(aEnv.EXECUTOR_ADDR)?.spec.selector ?? { none: 'no selector' });
    expect(((a.spec?.terminationGracePeriodSeconds ?? 30) - 5) * 1000).toBeGreaterThanOrEqual(loadEnv(agentEnv, aEnv).AGENT_SHUTDOWN_GRACE_MS);
    // NATS keeps JetStream (the planner's state) on a volume, with the configuration from its Secret.
    const nats = workloads.find((w) => w.metadata.name === 'nats');
    expect((nats?.spec.template?.spec.containers[0] as K8sContainer & { args: string[] }).args).toEqual(expect.arrayContaining(['-js', '-sd', '/data']));
  });
});
