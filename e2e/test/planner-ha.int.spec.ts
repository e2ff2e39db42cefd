import * as grpc from '@grpc/grpc-js';
import type { NatsConnection } from '@nats-io/transport-node';
import { ServiceProcess } from '@tandem/launcher';
import { modelIdOf, readManifest } from '@tandem/model';
import {
  ClientProfile,
  PlannerServiceClient,
  ServerLoad,
  Subjects,
  type ClientPlan,
  type ListPlansResponse,
  type StageTiming,
  type WatchPlansResponse,
} from '@tandem/protocol';
import { clientProfile, eventually, makeTempModel, sameStageTimes, serverLoad, type NatsServerHandle, type TempModel } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { makeCredentials, type TestCredentials } from './credentials';

// Two real planner processes sharing their state in NATS JetStream key-value, as deployed:
// mTLS and tokens on their gRPC ports, a nats-server with one user per service (the planner's
// user allowed its own buckets only) and JetStream. One leads, the other serves the same plans;
// the leader killed (SIGKILL: no lease released, nothing flushed), the other takes over within
// the bound, and a client's plan stream, moved to the other planner, never sees its epoch go
// back. A planner started again continues the stored plans.

const LEASE_MS = 1000;
const CLIENT = 'dev-ha';

/** A planner process, its JSON log lines kept. */
class Planner extends ServiceProcess {
  constructor(
    readonly id: string,
    env: Record<string, string>,
    readonly logs: { msg?: string; level?: number; [k: string]: unknown }[] = [],
  ) {
    super({
      name: `planner-${id}`,
      app: 'planner',
      env: { LOG_LEVEL: 'info', ...env },
      onLine: (line) => {
        try {
          if (logs.push(JSON.parse(line) as { msg?: string }) > 2000) logs.shift();
        } catch {
          /* not JSON */
        }
      },
    });
  }
}

describe('two planner processes sharing their state (JetStream key-value)', () => {
  let creds: TestCredentials;
  let model: TempModel;
  let nats: NatsServerHandle;
  let tap: NatsConnection;
  let modelId: string;
  let stageCount: number;
  const planners: Planner[] = [];
  const clients: grpc.Client[] = [];
  let stages: StageTiming[];
  let publishing: NodeJS.Timeout | undefined;

  const startPlanner = async (id: string): Promise<Planner> => {
    const p = new Planner(id, {
      MODEL_DIR: model.dir,
      PLANNER_ADDR: '127.0.0.1:0',
      NATS_URL: nats.url,
      PLANNER_DEBOUNCE_MS: '20',
      PLANNER_LEADER_LEASE_MS: String(LEASE_MS),
      ...creds.serverEnv(),
      ...creds.natsEnv('planner'),
    });
    planners.push(p);
    await p.listening;
    return p;
  };
  const client = (p: Planner, id?: string): PlannerServiceClient => {
    const c = new PlannerServiceClient(`127.0.0.1:${p.port}`, ...creds.clientArgs(id));
    clients.push(c);
    return c;
  };
  const listPlans = (p: Planner): Promise<ListPlansResponse> =>
    new Promise((resolve, reject) =>
      client(p).listPlans({ pageSize: 0, pageToken: '' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (err, res) =>
        err ? reject(err) : resolve(res!),
      ),
    );
  const roleOf = async (p: Planner): Promise<string | undefined> => (await listPlans(p).catch(() => undefined))?.plannerRole;

  /** The agent's side: one plan stream at a time, moved to `next()` when it ends; every plan seen, in order. */
  function follow(first: Planner, next: () => Planner): { plans: ClientPlan[]; streams: number; stop(): void } {
    const seen = { plans: [] as ClientPlan[], streams: 0, stop: () => undefined as void };
    let stopped = false;
    let call: grpc.ClientReadableStream<WatchPlansResponse> | undefined;
    const open = (p: Planner): void => {
      seen.streams++;
      call = client(p, CLIENT).watchPlans({ clientId: CLIENT });
      call.on('data', (m: WatchPlansResponse) => {
        if (m.plan) seen.plans.push(m.plan);
      });
      call.on('error', () => undefined);
      call.on('close', () => {
        if (!stopped) setTimeout(() => open(next()), 100);
      });
    };
    seen.stop = () => {
      stopped = true;
      call?.cancel();
    };
    open(first);
    return seen;
  }

  beforeAll(async () => {
    creds = makeCredentials({ agents: [], executors: ['executor'], clients: [CLIENT] });
    model = await makeTempModel();
    modelId = modelIdOf(model.dir);
    stageCount = (await readManifest(model.dir)).stages.length;
    nats = await creds.startNats();
    tap = await creds.connectNats(nats.url);
    stages = sameStageTimes(stageCount, 0.05);
    // What an agent and the executor do: their telemetry every 200 ms.
    publishing = setInterval(() => {
      tap.publish(Subjects.clientProfile(CLIENT), ClientProfile.encode(clientProfile({ clientId: CLIENT, modelId, stages })).finish());
      tap.publish(
        Subjects.serverLoad('executor'),
        ServerLoad.encode(serverLoad({ serverId: 'executor', modelId, stages: sameStageTimes(stageCount, 0.5) })).finish(),
      );
    }, 200);
  }, 60_000);

  afterAll(async () => {
    clearInterval(publishing);
    for (const c of clients) c.close();
    await Promise.all(planners.map((p) => p.kill()));
    await tap?.close();
    await nats?.stop();
    model?.remove();
    creds?.remove();
  });

  it('one leads and the other serves its plans; the leader killed, the other takes over within the bound and no epoch goes back; a restarted planner continues', async () => {
    const first = await startPlanner('one');
    await eventually(async () => (await roleOf(first)) === 'leader', { what: 'the first planner leading', timeoutMs: 10_000 });
    const second = await startPlanner('two');
    expect(await roleOf(second)).toBe('standby');

    const made = await eventually(async () => (await listPlans(first)).plans.find((p) => p.clientId === CLIENT), { what: 'the first plan', timeoutMs: 10_000 });
    await eventually(async () => (await listPlans(second)).plans.find((p) => p.clientId === CLIENT)?.epoch === made.epoch, {
      what: 'the same plan on the standby',
    });

    // The agent watches the leader; a change of its device moves the plan (a new epoch) on both planners.
    const agent = follow(first, () => second);
    await eventually(() => agent.plans.length >= 1, { what: 'the plan on the stream' });
    stages = sameStageTimes(stageCount, 500);
    const changed = await eventually(() => agent.plans.find((p) => p.epoch > made.epoch), { what: 'the changed plan', timeoutMs: 10_000 });
    expect(changed.classes.map((c) => c.placement)).not.toEqual(made.classes.map((c) => c.placement));
    await eventually(async () => (await listPlans(second)).plans.find((p) => p.clientId === CLIENT)?.epoch === changed.epoch, {
      what: 'the change on the standby',
    });

    // SIGKILL: no lease released, no stream ended cleanly. The standby takes over once the lease has gone unrenewed for a lease.
    const killedAt = Date.now();
    await first.kill('SIGKILL');
    await eventually(async () => (await roleOf(second)) === 'leader', { what: 'the standby leading', timeoutMs: LEASE_MS * 5, intervalMs: 50 });
    const takeoverMs = Date.now() - killedAt;
    process.stdout.write(`${JSON.stringify({ event: 'planner-failover', leaseMs: LEASE_MS, takeoverMs })}\n`);
    expect(takeoverMs).toBeLessThan(LEASE_MS * 1.5 + 1000);
    await eventually(() => agent.streams >= 2 && agent.plans.length >= 3, { what: 'the stream moved to the new leader' });
    // Same device, same placements: the new leader keeps the epoch (no push of a change that is none).
    await sleep(500);
    expect(agent.plans.slice(2).every((p) => p.epoch === changed.epoch)).toBe(true);

    // The device changes again: the new leader plans it under a higher epoch.
    stages = sameStageTimes(stageCount, 0.05);
    const after = await eventually(() => agent.plans.find((p) => p.epoch > changed.epoch), { what: "the new leader's change", timeoutMs: 10_000 });
    const epochs = agent.plans.map((p) => p.epoch);
    expect(epochs).toEqual([...epochs].sort((a, b) => a - b));
    expect(after.epoch).toBeGreaterThan(changed.epoch);

    // The killed planner started again: it stands by and serves the stored plan as it is.
    const again = await startPlanner('three');
    expect(await roleOf(again)).toBe('standby');
    await eventually(async () => (await listPlans(again)).plans.find((p) => p.clientId === CLIENT)?.epoch === after.epoch, {
      what: 'the stored plan on the restarted planner',
    });
    agent.stop();

    // Under the per-service NATS permissions nothing was refused.
    for (const p of planners) expect(p.logs.filter((l) => (l.level ?? 0) >= 50 || /NATS error|permission/i.test(l.msg ?? ''))).toEqual([]);
  });
});
