import * as grpc from '@grpc/grpc-js';
import { makeTempModel, type TempModel } from '@tandem/testkit';
import { OnnxStageEngine } from '../src';
import type { TestSession } from './session-client';
import { startTestExecutor, type TestExecutor } from './test-executor';

// Per-client session limits: one client id holds at most EXECUTOR_MAX_SESSIONS_PER_CLIENT
// sessions; one more is RESOURCE_EXHAUSTED naming the client, the limit and a retry hint
// (also in the trailer `retry-after-ms`), while other clients still open sessions.

describe('server-executor per-client session limits', () => {
  let model: TempModel;
  let exec: TestExecutor;
  const open = async (clientId: string): Promise<TestSession> => {
    const s = exec.session();
    s.call.write({ kind: { $case: 'open', value: { clientId, planEpoch: '0', modelId: '' } } });
    await Promise.race([s.next(1).catch(() => undefined), s.ended]);
    return s;
  };

  beforeAll(async () => {
    model = await makeTempModel();
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    exec = await startTestExecutor(engine, { serverId: 'exec-limits', maxSessions: 6, maxSessionsPerClient: 2, retryAfterMs: 750, maxContextTokens: 40 });
  });

  afterAll(async () => {
    await exec?.cancelSessions();
    await exec?.stop();
    model?.remove();
  });

  it("refuses a client's third session with RESOURCE_EXHAUSTED and a retry hint, admits other clients, and admits again once one ends", async () => {
    const a1 = await open('dev-a');
    const a2 = await open('dev-a');
    expect(a1.answers[0]?.kind?.$case).toBe('opened');
    expect(a2.answers[0]?.kind?.$case).toBe('opened');
    const a3 = await open('dev-a');
    const err = (await a3.ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain("open sessions of client 'dev-a' must stay <= 2 (EXECUTOR_MAX_SESSIONS_PER_CLIENT)");
    expect(err.details).toContain('retry after 750 ms');
    expect(err.metadata.get('retry-after-ms')).toEqual(['750']);
    // another client is not affected
    const b1 = await open('dev-b');
    expect(b1.answers[0]?.kind?.$case).toBe('opened');
    // a long client id is cut in the message
    const long = 'x'.repeat(20_000);
    await open(long);
    await open(long);
    const l3 = (await (await open(long)).ended) as grpc.ServiceError;
    expect(l3.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(Buffer.byteLength(l3.details)).toBeLessThanOrEqual(1024);
    // one of dev-a's sessions ends: dev-a may open another
    a1.call.end();
    await a1.ended;
    const deadline = Date.now() + 5000;
    let again = await open('dev-a');
    while (again.answers[0]?.kind?.$case !== 'opened' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      again = await open('dev-a');
    }
    expect(again.answers[0]?.kind?.$case).toBe('opened');
  });

  it('sends the retry hint with the global session limit too', async () => {
    // 2 (dev-a) + 1 (dev-b) + 2 (long id) are open: one more of a new client fills the 6, the next is refused
    await open('dev-c');
    const err = (await (await open('dev-d')).ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain('(EXECUTOR_MAX_SESSIONS)');
    expect(err.metadata.get('retry-after-ms')).toEqual(['750']);
  });
});
