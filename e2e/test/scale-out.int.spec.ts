import { ServiceProcess } from '@tandem/launcher';
import { SplitPipeline, readManifest } from '@tandem/model';
import {
  AgentServiceClient,
  agentStatus,
  generateVia,
  listPlans,
  PlannerServiceClient,
  type AgentStatusResponse,
  type ListPlansResponse,
} from '@tandem/protocol';
import { eventually, makeTempModel, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { makeCredentials, type TestCredentials } from './credentials';

// Past one machine, as deployed, every part a real process: two executors (each advertising its
// address), two planners sharing their state in JetStream key-value (one leads), four agents
// watching either planner (PLANNER_ADDR lists both), mTLS, tokens and NATS users. Generations run
// through every agent the whole time while the leading planner is killed (SIGKILL) and then the
// executor with the most clients is drained (SIGTERM): no request fails, every token is the one
// a one-process run makes, the clients move to the other executor, and the other planner leads.

const AGENTS = ['dev-1', 'dev-2', 'dev-3', 'dev-4'];
const EXECUTORS = ['ex-a', 'ex-b'];
const PROMPTS = [
  [464, 2068, 7586, 21831, 18045],
  [15496, 11, 995, 318, 257, 1332],
];
const NEW = 16;
const LEASE_MS = 1000;

describe('two executors and two planners, an executor drained and a planner killed', () => {
  let creds: TestCredentials;
  let model: TempModel;
  let nats: NatsServerHandle;
  const procs: ServiceProcess[] = [];
  const executors = new Map<string, ServiceProcess>();
  const planners: ServiceProcess[] = [];
  const agents: { id: string; proc: ServiceProcess; client: AgentServiceClient }[] = [];
  const plannerClients: PlannerServiceClient[] = [];
  let expected: number[][];
  let stageCount = 0;

  const start = async (p: ServiceProcess): Promise<ServiceProcess> => {
    procs.push(p);
    await p.listening;
    return p;
  };
  const common = (id: string): Record<string, string> => ({
    MODEL_DIR: model.dir,
    NATS_URL: nats.url,
    LOG_LEVEL: 'warn',
    ...creds.natsEnv(id),
  });
  const plansOf = async (): Promise<ListPlansResponse | undefined> => {
    for (const c of plannerClients) {
      const r = await listPlans(c, 3000).catch(() => undefined);
      if (r) return r;
    }
    return undefined;
  };
  const statuses = (): Promise<AgentStatusResponse[]> => Promise.all(agents.map((a) => agentStatus(a.client, 5000)));

  beforeAll(async () => {
    creds = makeCredentials({ agents: AGENTS, executors: EXECUTORS });
    model = await makeTempModel();
    nats = await creds.startNats();
    stageCount = (await readManifest(model.dir)).stages.length;
    const pipe = await SplitPipeline.load(model.dir, 'C'.repeat(stageCount));
    expected = [];
    for (const p of PROMPTS) expected.push(await pipe.generate(p, { maxNewTokens: NEW }));
    await pipe.close();

    for (const id of EXECUTORS) {
      const p = new ServiceProcess({
        name: id,
        app: 'server-executor',
        env: {
          ...common(id),
          ...creds.serverEnv(),
          EXECUTOR_ID: id,
          TELEMETRY_INTERVAL_MS: '200',
          // A concrete host with port 0: the executor advertises the port it bound.
          EXECUTOR_ADDR: '127.0.0.1:0',
          EXECUTOR_THREADS: '1',
          EXECUTOR_SHUTDOWN_GRACE_MS: '3000',
        },
      });
      executors.set(id, await start(p));
    }
    for (const id of ['one', 'two']) {
      const p = await start(
        new ServiceProcess({
          name: `planner-${id}`,
          app: 'planner',
          env: {
            ...common('planner'),
            ...creds.serverEnv(),
            PLANNER_ADDR: '127.0.0.1:0',
            PLANNER_DEBOUNCE_MS: '20',
            PLANNER_LEADER_LEASE_MS: String(LEASE_MS),
          },
        }),
      );
      planners.push(p);
      plannerClients.push(new PlannerServiceClient(p.address, ...creds.clientArgs()));
      // The first leads before the second starts, so which one to kill is known.
      if (id === 'one')
        await eventually(async () => (await listPlans(plannerClients[0], 3000).catch(() => undefined))?.plannerRole === 'leader', {
          what: 'planner one leading',
          timeoutMs: 15_000,
        });
    }
    const plannerAddr = planners.map((p) => p.address).join(',');
    for (const [i, id] of AGENTS.entries()) {
      const proc = await start(
        new ServiceProcess({
          name: `agent-${id}`,
          app: 'client-agent',
          env: {
            ...common(id),
            ...creds.serverEnv(),
            ...creds.upstreamEnv(id),
            AGENT_ID: id,
            TELEMETRY_INTERVAL_MS: '200',
            AGENT_ADDR: '127.0.0.1:0',
            AGENT_THREADS: '1',
            // Half the agents watch the planner that will be killed first.
            PLANNER_ADDR:
              i % 2 === 0
                ? plannerAddr
                : [...planners]
                    .reverse()
                    .map((p) => p.address)
                    .join(','),
            EXECUTOR_ADDR: executors.get('ex-a')!.address,
            AGENT_SHUTDOWN_GRACE_MS: '2000',
          },
        }),
      );
      agents.push({ id, proc, client: new AgentServiceClient(proc.address, ...creds.clientArgs(id)) });
    }
  }, 120_000);

  afterAll(async () => {
    for (const a of agents) a.client.close();
    for (const c of plannerClients) c.close();
    await Promise.all(procs.map((p) => p.stop(5000)));
    await nats?.stop();
    model?.remove();
    creds?.remove();
  });

  it('serves every request, token-exact, while the leading planner is killed and the busiest executor drained', async () => {
    // Every agent follows a plan naming one of the two executors.
    const assigned = await eventually(
      async () => {
        const s = await statuses().catch(() => undefined);
        return s && s.every((x) => x.planEpoch > 0 && EXECUTORS.includes(x.executorId)) ? s : undefined;
      },
      { what: 'every agent on a planned executor', timeoutMs: 30_000 },
    );
    const listed = await plansOf();
    expect(listed?.executors.map((e) => e.id).sort()).toEqual(EXECUTORS);

    // Load: every agent runs generations back to back, alternating the prompts, until told to stop.
    let running = true;
    const failures: string[] = [];
    const done: { agent: string; executor: string }[] = [];
    // Placements: the plan's (on these unhurried devices often all on the device), all-server
    // (the executor decodes), and a split (a round trip per token): the last two always use
    // the executor the plan names.
    const placements = ['', 'S'.repeat(stageCount), 'C' + 'S'.repeat(stageCount - 2) + 'C'];
    const loops = agents.map(async (a, i) => {
      for (let n = i; running; n++) {
        const k = n % PROMPTS.length;
        const placement = placements[n % placements.length];
        try {
          const r = await generateVia(a.client, { input: { $case: 'ids', value: { ids: PROMPTS[k] } }, maxNewTokens: NEW, placement }, 60_000);
          if (JSON.stringify(r.ids) !== JSON.stringify(expected[k])) failures.push(`${a.id}: tokens ${r.ids.join(',')} differ from ${expected[k].join(',')}`);
          if (placement !== '' && !EXECUTORS.includes(r.summary.executorId ?? ''))
            failures.push(`${a.id}: ran ${placement} on executor '${r.summary.executorId ?? ''}'`);
          done.push({ agent: a.id, executor: r.summary.executorId ?? '' });
        } catch (err) {
          failures.push(`${a.id}: ${(err as Error).message}`);
        }
      }
    });
    try {
      await eventually(() => done.length >= AGENTS.length * 2, { what: 'generations before the faults', timeoutMs: 60_000 });

      // The leading planner dies without a word: the other leads within the lease's bound, and
      // the agents that watched the dead one move to it.
      const before = done.length;
      planners[0].child.kill('SIGKILL');
      await eventually(async () => (await listPlans(plannerClients[1], 3000).catch(() => undefined))?.plannerRole === 'leader', {
        what: 'planner two leading',
        timeoutMs: 15_000,
      });
      await eventually(async () => (await statuses()).every((s) => s.plannerConnected), { what: 'every agent watching planner two', timeoutMs: 20_000 });
      await eventually(() => done.length >= before + AGENTS.length, { what: 'generations after the planner died', timeoutMs: 60_000 });

      // The executor with the most clients drains (SIGTERM): its clients move to the other,
      // generations running on it finish or resume there, and it exits.
      const counts = new Map(EXECUTORS.map((e) => [e, assigned.filter((s) => s.executorId === e).length]));
      const drained = [...counts.entries()].sort((x, y) => y[1] - x[1])[0][0];
      const other = EXECUTORS.find((e) => e !== drained)!;
      const beforeDrain = done.length;
      const proc = executors.get(drained)!;
      proc.child.kill('SIGTERM');
      await eventually(async () => (await statuses()).every((s) => s.executorId === other), { what: `every agent on ${other}`, timeoutMs: 20_000 });
      await proc.exited;
      await eventually(() => done.length >= beforeDrain + AGENTS.length * 2, { what: 'generations after the drain', timeoutMs: 60_000 });
      const after = await plansOf();
      expect(after?.plans.filter((p) => AGENTS.includes(p.clientId)).every((p) => p.executor?.id === other)).toBe(true);
      expect(after?.plans.every((p) => p.alternates.every((x) => x.id !== drained))).toBe(true);
      await sleep(500);
    } finally {
      running = false;
      await Promise.all(loops);
    }
    expect(failures).toEqual([]);
    // Both executors served generations over the run (the plan's own placements, when they keep
    // every stage on the device, name none).
    expect(new Set(done.map((d) => d.executor).filter((e) => e !== ''))).toEqual(new Set(EXECUTORS));
  }, 240_000);
});
