import * as grpc from '@grpc/grpc-js';
import type { NatsConnection } from '@nats-io/transport-node';
import { AGENT_SERVICE_NAME } from '@tandem/client-agent';
import { NO_PLAN_REASONS, PLANNER_SERVICE_NAME } from '@tandem/planner';
import { agentStatus, HEALTH_SERVICE_NAME, INFERENCE_SERVICE_NAME, ServerLoad, Subjects } from '@tandem/protocol';
import { EXECUTOR_SERVICE_NAME } from '@tandem/server-executor';
import { clientOptions, createLogger, loadClientSecurity } from '@tandem/service-kit';
import { eventually, ReflectionClient, type ReflectionVersion } from '@tandem/testkit';

import { makeCredentials, type TestCredentials } from './credentials';
import { startOneDevice, type OneDevice } from './stack';

// What a user of a client in another language sees without the protos or the logs, on a real
// stack as deployed (mTLS, bearer tokens, NATS users): server reflection on every service, and
// the agent's status saying which plan it follows, or why it follows none.

const log = createLogger({ name: 'test', level: 'silent' });
const NEW_TOKENS = 4;

describe('reflection and the plan status on a real stack as deployed, its executor without telemetry', () => {
  let stack: OneDevice;
  let nc: NatsConnection;
  let creds: TestCredentials;
  const reflectors: ReflectionClient[] = [];

  beforeAll(async () => {
    creds = makeCredentials({ agents: ['dev-intro'], executors: ['exec'] });
    stack = await startOneDevice(log, creds, { clientId: 'dev-intro', cls: { expectedNewTokens: NEW_TOKENS }, caller: 'dev-intro', executorTelemetry: false });
    nc = await creds.connectNats(stack.nats.url);
  });

  afterAll(async () => {
    for (const r of reflectors) r.close();
    await nc?.close();
    await stack?.stop();
    creds?.remove();
  });

  /** A reflection client of `service` over mTLS, with the token of `id` (the operator's when omitted; none with `token: false`). */
  const reflect = (service: keyof OneDevice['addrs'], opts: { id?: string; token?: boolean; version?: ReflectionVersion } = {}): ReflectionClient => {
    const sec =
      opts.token === false
        ? loadClientSecurity({ caFile: creds.certs.caCert, certFile: creds.certs.clientCert, keyFile: creds.certs.clientKey })
        : creds.clientSecurity(opts.id);
    const r = new ReflectionClient(stack.addrs[service], sec.credentials, clientOptions(sec), { version: opts.version });
    reflectors.push(r);
    return r;
  };

  // Each service, its own methods, and the other services its server carries besides health.
  const SERVICES = [
    ['executor', EXECUTOR_SERVICE_NAME, ['GetStatus', 'ProbeLink', 'Session'], [INFERENCE_SERVICE_NAME]],
    ['planner', PLANNER_SERVICE_NAME, ['ListPlans', 'WatchPlans'], []],
    ['agent', AGENT_SERVICE_NAME, ['Generate', 'GetStatus'], []],
  ] as const;

  it.each(SERVICES)(
    'the %s lists its service and health by reflection (v1 and v1alpha), and describes its service by symbol',
    async (service, name, methods, others) => {
      for (const version of ['v1', 'v1alpha'] as const) {
        const r = reflect(service, { version });
        expect((await r.listServices()).sort()).toEqual([HEALTH_SERVICE_NAME, name, ...others].sort());
        const [own, ...imports] = await r.fileContainingSymbol(name);
        const described = own.service.find((s) => `${own.package}.${s.name}` === name);
        expect(described?.method.map((m) => m.name).sort()).toEqual([...methods]);
        // Every message type a method takes or returns is in the files answered.
        const types = new Set([own, ...imports].flatMap((f) => f.messageType.map((m) => `.${f.package}.${m.name}`)));
        for (const m of described?.method ?? []) {
          expect(types).toContain(m.inputType);
          expect(types).toContain(m.outputType);
        }
      }
    },
  );

  it("describes the executor's Open Inference Protocol service by symbol, as KServe's and Triton's clients call it", async () => {
    const [own] = await reflect('executor').fileContainingSymbol(INFERENCE_SERVICE_NAME);
    const described = own.service.find((s) => `${own.package}.${s.name}` === INFERENCE_SERVICE_NAME);
    expect(described?.method.map((m) => m.name).sort()).toEqual(['ModelInfer', 'ModelMetadata', 'ModelReady', 'ServerLive', 'ServerMetadata', 'ServerReady']);
  });

  it.each(SERVICES)('the %s answers reflection only with a token (UNAUTHENTICATED without), any identity', async (service, name) => {
    await expect(reflect(service, { token: false }).listServices()).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    expect(await reflect(service, { id: 'dev-intro' }).listServices()).toContain(name);
  });

  it("says why the agent follows no plan while no executor reports its load, then gives the plan's placements as messages once one does", async () => {
    await eventually(async () => (await agentStatus(stack.client)).noPlanReason.includes(NO_PLAN_REASONS.noLoad), {
      timeoutMs: 10_000,
      what: "the planner's reason on the agent",
    });
    const waiting = await agentStatus(stack.client);
    expect(waiting).toMatchObject({ planEpoch: 0, placements: [], classPlacements: [], plannerConnected: true });
    expect(waiting.noPlanReason).toBe(`the planner has no plan for this client yet: ${NO_PLAN_REASONS.noLoad}`);

    // The executor's own load report, published as its telemetry would.
    const report = stack.executor.loadReader();
    nc.publish(Subjects.serverLoad('exec'), ServerLoad.encode({ ...report(), serverId: 'exec' }).finish());
    await eventually(async () => (await agentStatus(stack.client)).planEpoch > 0, { timeoutMs: 10_000, what: 'a plan for the agent' });
    const st = await agentStatus(stack.client);
    expect(st.noPlanReason).toBe('');
    expect(st.classPlacements).toHaveLength(1);
    const [c] = st.classPlacements;
    expect(c).toMatchObject({ requestClass: 'short', planEpoch: st.planEpoch, maxPromptTokens: 16, slaMs: 10_000 });
    expect(c.placement).toMatch(new RegExp(`^[CS]{${stack.stageCount}}$`));
    expect(c.predictedLatencyMs).toBeGreaterThan(0);
    // The deprecated strings say the same.
    expect(st.placements).toEqual([`short=${c.placement}`]);
    const plan = stack.planner.plans().find((x) => x.clientId === 'dev-intro');
    expect(plan?.epoch).toBe(st.planEpoch);
    expect(c.placement).toBe(plan?.classes[0].placement);
  });
});
