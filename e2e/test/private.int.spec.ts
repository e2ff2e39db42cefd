import * as grpc from '@grpc/grpc-js';
import { SplitPipeline } from '@tandem/model';
import { generateVia, type GenerateRequest } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { eventually } from '@tandem/testkit';
import { credentialsForSuite, type TestCredentials } from './credentials';
import { startOneDevice, type OneDevice } from './stack';

// A private device (AGENT_PRIVATE): its token ids and text never reach the server. The services
// run as deployed (mTLS, tokens, a nats-server with one user per service).

const log = createLogger({ name: 'test', level: 'silent' });
const PROMPT = [15496, 11, 995, 318];

let creds: TestCredentials;
credentialsForSuite({ agents: ['dev-private'], executors: ['exec'] }, (c) => (creds = c));

describe('a private device end to end', () => {
  let stack: OneDevice;

  const generate = (req: Partial<GenerateRequest>) =>
    generateVia(stack.client, { input: { $case: 'ids', value: { ids: PROMPT } }, maxNewTokens: 5, placement: '', ...req });

  beforeAll(async () => {
    stack = await startOneDevice(log, creds, { clientId: 'dev-private', cls: { expectedNewTokens: 5 }, agent: { private: true } });
  });

  afterAll(() => stack?.stop());

  it('gets plans that keep its embedding and head, from its profile', async () => {
    const plan = await eventually(() => stack.planner.plans().find((p) => p.clientId === 'dev-private'), {
      timeoutMs: 10_000,
      what: "the private device's plan",
    });
    for (const c of plan.classes) expect(c.placement).toMatch(/^C.*C$/);
  });

  it('runs the middle on the server in a private session, with the one-process tokens', async () => {
    const pipe = await SplitPipeline.load(stack.model.dir, 'S'.repeat(stack.stageCount));
    let want: number[];
    try {
      want = await pipe.generate(PROMPT, { maxNewTokens: 5 });
    } finally {
      await pipe.close();
    }
    const middle = `C${'S'.repeat(stack.stageCount - 2)}C`;
    const before = stack.executor.status().sessionsOpened;
    const r = await generate({ placement: middle });
    expect(r.summary.placement).toBe(middle);
    expect(r.tokens.map((t) => t.id)).toEqual(want);
    // It ran on the executor (in a session opened private, which refuses token ids).
    expect(stack.executor.status().sessionsOpened).toBeGreaterThan(before);
  });

  it('refuses a request placement that would send its token ids or its tokens, naming the stage', async () => {
    await expect(generate({ placement: 'S'.repeat(stack.stageCount) })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringContaining('placement puts stage 0 (token ids in) on the server, which AGENT_PRIVATE forbids'),
    });
    await expect(generate({ placement: `${'C'.repeat(stack.stageCount - 1)}S` })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringContaining(`placement puts stage ${stack.stageCount - 1} (tokens out) on the server`),
    });
  });
});
