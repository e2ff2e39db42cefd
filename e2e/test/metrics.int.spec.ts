import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AGENT_SERVICE_NAME } from '@tandem/client-agent';
import { PLANNER_SERVICE_NAME } from '@tandem/planner';
import { agentStatus, generateVia, HealthClient, ServingStatus, type GenerateRequest, type GenerateResponse, type HealthCheckResponse } from '@tandem/protocol';
import { EXECUTOR_SERVICE_NAME } from '@tandem/server-executor';
import { createLogger } from '@tandem/service-kit';
import { eventually, requireSample, scrapeText } from '@tandem/testkit';

import { makeCredentials, type TestCredentials } from './credentials';
import { startOneDevice, type OneDevice } from './stack';

const log = createLogger({ name: 'test', level: 'silent' });
const PROMPT = [15496, 11, 995, 318];
const NEW_TOKENS = 4;

/** Health Check of `service` on `addr` (mTLS, as an operator would probe). */
async function check(creds: TestCredentials, addr: string, service: string): Promise<ServingStatus> {
  const hc = new HealthClient(addr, ...creds.clientArgs());
  try {
    const r = await new Promise<HealthCheckResponse>((resolve, reject) => hc.check({ service }, (e, x) => (e ? reject(e) : resolve(x))));
    return r.status;
  } finally {
    hc.close();
  }
}

/** The value of one sample scraped from `port`; throws naming it when absent. */
async function scraped(port: number | undefined): Promise<(series: string) => number> {
  if (port === undefined) throw new Error('no metrics port');
  const text = await scrapeText(port);
  return (series) => requireSample(text, series);
}

describe('metrics and health by service name across a real stack as deployed (mTLS, tokens, NATS users)', () => {
  let stack: OneDevice;
  let creds: TestCredentials;

  beforeAll(async () => {
    creds = makeCredentials({ agents: ['dev-metrics'], executors: ['exec'] });
    const metrics = { metricsPort: 0 };
    stack = await startOneDevice(log, creds, {
      clientId: 'dev-metrics',
      cls: { expectedNewTokens: NEW_TOKENS },
      caller: 'dev-metrics',
      executor: metrics,
      planner: metrics,
      agent: metrics,
    });
    await eventually(async () => (await agentStatus(stack.client)).planEpoch > 0, { timeoutMs: 15_000, what: 'a plan for the agent' });
  });

  afterAll(async () => {
    await stack?.stop();
    creds?.remove();
  });

  it('answers health SERVING by each service name', async () => {
    expect(await check(creds, stack.addrs.executor, EXECUTOR_SERVICE_NAME)).toBe(ServingStatus.SERVING);
    expect(await check(creds, stack.addrs.planner, PLANNER_SERVICE_NAME)).toBe(ServingStatus.SERVING);
    expect(await check(creds, stack.addrs.agent, AGENT_SERVICE_NAME)).toBe(ServingStatus.SERVING);
    for (const a of Object.values(stack.addrs)) expect(await check(creds, a, '')).toBe(ServingStatus.SERVING);
    await expect(check(creds, stack.addrs.agent, 'tandem.nothing.v1.Nothing')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it('counts generations by placement kind and status on the agent, matching the executor and the planner', async () => {
    const gen = (placement: string): Promise<unknown> =>
      generateVia(stack.client, { input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: NEW_TOKENS, placement } as GenerateRequest);
    const allServer = 'S'.repeat(stack.stageCount);
    const allDevice = 'C'.repeat(stack.stageCount);
    const split = `C${'S'.repeat(stack.stageCount - 1)}`;
    const before = await scraped(stack.executor.metrics.port);
    const startedBefore = before('tandem_executor_generations_started_total');
    for (const p of [allServer, allServer, allDevice, split, split, split]) await gen(p);
    // An invalid request is refused before it runs: not counted.
    await expect(gen('X'.repeat(stack.stageCount))).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });

    const a = await scraped(stack.agent.metrics.port);
    expect(a('tandem_agent_generations_total{placement="all-server",status="ok"}')).toBe(2);
    expect(a('tandem_agent_generations_total{placement="all-device",status="ok"}')).toBe(1);
    expect(a('tandem_agent_generations_total{placement="split",status="ok"}')).toBe(3);
    for (const kind of ['all-server', 'split', 'all-device']) expect(a(`tandem_agent_generations_total{placement="${kind}",status="failed"}`)).toBe(0);
    expect(a('tandem_agent_generation_duration_seconds_count{placement="split"}')).toBe(3);
    expect(a('tandem_agent_time_to_first_token_seconds_count{placement="all-server"}')).toBe(2);
    // TTFT comes before the end: its sum is below the end-to-end sum.
    expect(a('tandem_agent_time_to_first_token_seconds_sum{placement="split"}')).toBeLessThan(
      a('tandem_agent_generation_duration_seconds_sum{placement="split"}'),
    );
    expect(a('tandem_agent_plan_updates_total')).toBeGreaterThanOrEqual(1);
    expect(a('tandem_agent_generations_resumed_total')).toBe(0);

    // The two all-server generations were decoded on the executor; the split ones ran steps there.
    const e = await scraped(stack.executor.metrics.port);
    expect(e('tandem_executor_generations_started_total') - startedBefore).toBe(2);
    expect(e('tandem_executor_generations_finished_total{status="completed"}')).toBe(2);
    expect(e('tandem_executor_generated_tokens_total')).toBe(2 * NEW_TOKENS);
    // Each split generation: a prompt step, then NEW_TOKENS - 1 decode steps; each all-server one the same, server-side.
    expect(e('tandem_executor_step_duration_seconds_count{kind="prompt"}')).toBe(5);
    expect(e('tandem_executor_step_duration_seconds_count{kind="decode"}')).toBe(5 * (NEW_TOKENS - 1));

    // The planner sees the executor's load and the agent as one client; placements overridden by the request report no outcome.
    const p = await scraped(stack.planner.metrics.port);
    expect(p('tandem_planner_clients')).toBe(1);
    expect(p('tandem_planner_plan_changes_total{algorithm="dp",objective="work"}')).toBeGreaterThanOrEqual(1);
    expect(p('tandem_planner_telemetry_accepted_total{type="ServerLoad"}')).toBeGreaterThanOrEqual(1);
  });

  it('counts a generation the caller cancelled as cancelled', async () => {
    const call = stack.client.generate({
      input: { $case: 'ids', value: { ids: PROMPT } },
      maxNewTokens: 200,
      placement: 'S'.repeat(stack.stageCount),
    } as GenerateRequest);
    await new Promise<void>((resolve) => call.once('data', (_m: GenerateResponse) => resolve()));
    call.on('error', () => undefined);
    call.cancel();
    await eventually(async () => (await scraped(stack.agent.metrics.port))('tandem_agent_generations_total{placement="all-server",status="cancelled"}') === 1, {
      timeoutMs: 10_000,
      what: 'the cancelled generation counted',
    });
  });

  it('counts generations that follow the plan, and the planner their outcomes', async () => {
    const p0 = await scraped(stack.planner.metrics.port);
    const met0 = p0('tandem_planner_outcomes_total{request_class="short",result="met"}');
    await generateVia(stack.client, { input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: NEW_TOKENS, placement: '' } as GenerateRequest);
    await eventually(
      async () => (await scraped(stack.planner.metrics.port))('tandem_planner_outcomes_total{request_class="short",result="met"}') === met0 + 1,
      {
        timeoutMs: 10_000,
        what: "the planner's outcome count",
      },
    );
    const p = await scraped(stack.planner.metrics.port);
    expect(p('tandem_planner_observed_latency_seconds_count{request_class="short",term="e2e"}')).toBe(met0 + 1);
  });
});

describe('a bad metrics port stops each service at start-up', () => {
  const root = join(__dirname, '..', '..');
  it.each([
    ['server-executor', 'EXECUTOR_METRICS_PORT'],
    ['planner', 'PLANNER_METRICS_PORT'],
    ['client-agent', 'AGENT_METRICS_PORT'],
  ])(
    '%s exits 2 naming %s, the rule and the value',
    (app, name) => {
      const r = spawnSync(process.execPath, ['--require', 'tsx/cjs', join(root, 'apps', app, 'src', 'main.ts')], {
        cwd: root,
        encoding: 'utf8',
        env: { PATH: process.env.PATH ?? '', MODEL_DIR: '/nonexistent', [name]: '65536' },
        timeout: 60_000,
      });
      expect({ status: r.status, stderr: r.stderr }).toEqual({
        status: 2,
        stderr: `${app}: invalid configuration:\n  ${name} must be an integer in 0..65535, given '65536'\n`,
      });
    },
    70_000,
  );
});
