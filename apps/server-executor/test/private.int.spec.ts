import * as grpc from '@grpc/grpc-js';
import type { HostTensor } from '@tandem/protocol';
import { expectRefusal, makeTempModel, type TempModel } from '@tandem/testkit';
import { OnnxStageEngine } from '../src';
import { ids } from './session-client';
import { startTestExecutor, type TestExecutor } from './test-executor';

// A private session (open.private): the client's token ids and text must not reach the server.
// Real model, real executor over gRPC.

describe('server-executor: private sessions', () => {
  let model: TempModel;
  let exec: TestExecutor;
  let stageCount: number;
  let nEmbd: number;
  const hidden = (t: number): HostTensor => ({ dtype: 'float32', shape: [1, t, nEmbd], data: new Float32Array(t * nEmbd).fill(0.25) });

  beforeAll(async () => {
    model = await makeTempModel();
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    stageCount = engine.stageCount;
    nEmbd = engine.nEmbd;
    exec = await startTestExecutor(engine, { serverId: 'exec-private' });
  });
  afterEach(() => exec.cancelSessions());
  afterAll(async () => {
    await exec?.stop();
    model?.remove();
  });

  it('runs the stages between the embedding and the head on hidden states', async () => {
    const s = exec.session();
    s.open('', 'p1', true);
    await s.next(1);
    s.step(1, 1, stageCount - 1, hidden(3));
    const r = await s.next(2);
    expect(r.kind?.$case).toBe('result');
    if (r.kind?.$case !== 'result' || r.kind.value.output?.$case !== 'tensor') throw new Error('expected a hidden state');
    expect(r.kind.value.output.value.shape).toEqual([1, 3, nEmbd]);
    s.call.end();
    expect((await s.ended).code).toBe(grpc.status.OK);
  });

  it('refuses token ids (a range from stage 0) with FAILED_PRECONDITION naming the field and open.private', async () => {
    const s = exec.session();
    s.open('', 'p2', true);
    await s.next(1);
    s.step(1, 0, 2, ids(464, 2068));
    expectRefusal(await s.ended, grpc.status.FAILED_PRECONDITION, 'step.stage_begin must be >= 1 in a private session', 'open.private', 'given 0');
  });

  it('refuses a range ending with the head, and a server-side generation', async () => {
    const head = exec.session();
    head.open('', 'p3', true);
    await head.next(1);
    head.step(1, 1, stageCount, hidden(2), true);
    expectRefusal(await head.ended, grpc.status.FAILED_PRECONDITION, `step.stage_end must be <= ${stageCount - 1} in a private session`, `given ${stageCount}`);
    const gen = exec.session();
    gen.open('', 'p4', true);
    await gen.next(1);
    gen.generate(1, ids(464, 2068), 3);
    expectRefusal(await gen.ended, grpc.status.FAILED_PRECONDITION, 'generate is refused in a private session', 'open.private');
  });

  it('accepts token ids from a session that is not private', async () => {
    const s = exec.session();
    s.open('', 'open-1');
    await s.next(1);
    s.step(1, 0, 2, ids(464, 2068));
    const r = await s.next(2);
    expect(r.kind?.$case).toBe('result');
    s.call.end();
  });
});
