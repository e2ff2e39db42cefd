import * as grpc from '@grpc/grpc-js';
import { SplitPipeline } from '@tandem/model';
import type { SessionResponse } from '@tandem/protocol';
import { makeTempModel, type TempModel } from '@tandem/testkit';
import { sleep } from '@tandem/util';
import { OnnxStageEngine } from '../src';
import { ids, type TestSession } from './session-client';
import { startTestExecutor, type TestExecutor } from './test-executor';

// EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT on a real executor: a client over its tokens per second
// has a step refused in-band (StepRefused: RESOURCE_EXHAUSTED, the hint) and its session goes on
// after the hint with the right tokens; a server-side generation is paced, and refused (trailer
// `retry-after-ms`) only when the client's bucket is empty; other clients are not affected.

/** Tokens per second per client, and so the burst: a 12-token prompt leaves a debt of 4, repaid in 625 ms. */
const RATE = 8;
const LONG = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
const SHORT = [464, 2068, 7586, 21831, 18045];

describe('server-executor per-client tokens per second', () => {
  let model: TempModel;
  let exec: TestExecutor;
  let stageCount: number;
  const expected = new Map<number[], number[]>();

  const open = async (clientId: string): Promise<TestSession> => {
    const s = exec.session();
    s.open('', clientId);
    expect((await s.next(1)).kind?.$case).toBe('opened');
    return s;
  };
  const tokenOf = (m: SessionResponse, seq: number): number => {
    if (m.kind?.$case !== 'result' || m.kind.value.seq !== String(seq) || m.kind.value.output?.$case !== 'token')
      throw new Error(`expected the token of step ${seq}, given ${JSON.stringify(m.kind)}`);
    return m.kind.value.output.value;
  };

  beforeAll(async () => {
    model = await makeTempModel();
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    exec = await startTestExecutor(engine, { serverId: 'exec-rate', maxTokensPerSPerClient: RATE });
    const pipe = await SplitPipeline.load(model.dir, 'SSSSSS');
    stageCount = pipe.manifest.stages.length;
    for (const p of [LONG, SHORT]) expected.set(p, await pipe.generate(p, { maxNewTokens: 8 }));
    await pipe.close();
  });

  afterEach(() => exec.cancelSessions(3000));

  afterAll(async () => {
    await exec?.stop();
    model?.remove();
  });

  it("refuses a split step over the client's rate in-band with RESOURCE_EXHAUSTED and a hint; the same session takes the same step after it, tokens right; another client is not affected", async () => {
    const a = await open('dev-a');
    // The 12-token prefill runs on the full bucket (8) and leaves a debt of 4.
    a.step(1, 0, stageCount, ids(...LONG), true);
    const got = [tokenOf(await a.next(2), 1)];
    // The first decode step needs the bucket back at 1 token: 5 tokens at 8/s, 625 ms less the time since.
    const t0 = performance.now();
    a.step(2, 0, stageCount, ids(got[0]), true);
    const refused = await a.next(3);
    if (refused.kind?.$case !== 'refused') throw new Error(`expected a refusal, given ${JSON.stringify(refused.kind)}`);
    const r = refused.kind.value;
    expect(r.seq).toBe('2');
    expect(r.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(r.message).toContain(
      "tokens of client 'dev-a' must stay <= 8 per second (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, a burst of 8): step seq 2 brings 1 tokens, and 0 are left",
    );
    expect(r.message).toContain(`retry after ${r.retryAfterMs} ms`);
    expect(r.retryAfterMs).toBeGreaterThan(300);
    expect(r.retryAfterMs).toBeLessThanOrEqual(625);

    // Meanwhile another client has its own bucket: a prefill and two decode steps (7 tokens) run at once.
    const b = await open('dev-b');
    const gotB: number[] = [];
    let input = ids(...SHORT);
    for (let seq = 1; seq <= 3; seq++) {
      b.step(seq, 0, stageCount, input, true);
      gotB.push(tokenOf(await b.next(seq + 1), seq));
      input = ids(gotB[gotB.length - 1]);
    }
    expect(gotB).toEqual(expected.get(SHORT)?.slice(0, 3));

    // The refused step left the session as it was: after the hint, the same step (the same seq) runs.
    await sleep(Math.max(0, r.retryAfterMs - (performance.now() - t0)) + 5);
    let seq = 2;
    let n = 4;
    let refusals = 0;
    while (got.length < 8) {
      a.step(seq, 0, stageCount, ids(got[got.length - 1]), true);
      const m = await a.next(n++);
      if (m.kind?.$case === 'refused') {
        // the client takes a token every 125 ms now; a step that comes early waits its hint
        refusals++;
        expect(m.kind.value.retryAfterMs).toBeLessThanOrEqual(125);
        await sleep(m.kind.value.retryAfterMs);
        continue;
      }
      got.push(tokenOf(m, seq++));
    }
    expect(got).toEqual(expected.get(LONG));
    // 19 tokens at 8 per second with a burst of 8: 11/8 s after the prefill took its 12 (less the time its answer took to come back)
    expect(performance.now() - t0).toBeGreaterThanOrEqual(1375 - 5 - 150);
    a.call.end();
    expect((await a.ended).code).toBe(grpc.status.OK);
    process.stderr.write(
      `split at ${RATE} tokens/s: first hint ${r.retryAfterMs} ms, ${refusals} more refusals, ${Math.round(performance.now() - t0)} ms for 7 decode steps\n`,
    );
  });

  it('paces a server-side generation to the rate instead of failing it, and refuses another one of the client (trailer retry-after-ms) while the bucket is empty', async () => {
    const g = await open('dev-g');
    const t0 = performance.now();
    g.generate(1, ids(...LONG), 8);
    await g.next(2); // token 0: the prefill ran on the full bucket, leaving a debt of 4
    const second = await open('dev-g');
    second.generate(1, ids(...SHORT), 2);
    const err = (await second.ended) as grpc.ServiceError;
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain(
      "tokens of client 'dev-g' must stay <= 8 per second (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT, a burst of 8): generate seq 1 needs a token to start, and 0 are left; retry after ",
    );
    const hint = Number(err.metadata.get('retry-after-ms')[0]);
    expect(err.details).toContain(`retry after ${hint} ms`);
    expect(hint).toBeGreaterThan(0);
    expect(hint).toBeLessThanOrEqual(625);
    // another client's generation is not held back
    const other = await open('dev-h');
    other.generate(1, ids(...SHORT), 3);
    await other.next(4);
    other.call.end();
    expect(other.tokens().map((t) => t.token)).toEqual(expected.get(SHORT)?.slice(0, 3));
    // the running one completes, paced: 19 tokens at 8/s with a burst of 8 take 11/8 s
    await g.next(9, 10_000);
    const ms = performance.now() - t0;
    g.call.end();
    expect((await g.ended).code).toBe(grpc.status.OK);
    expect(g.tokens().map((t) => t.token)).toEqual(expected.get(LONG));
    expect(ms).toBeGreaterThanOrEqual(1375 - 5);
    // once the bucket has a token again, the client's next generation is admitted
    await sleep(1000 / RATE + 5);
    const again = await open('dev-g');
    again.generate(1, ids(...SHORT), 2);
    await again.next(3, 10_000);
    again.call.end();
    expect((await again.ended).code).toBe(grpc.status.OK);
    expect(again.tokens().map((t) => t.token)).toEqual(expected.get(SHORT)?.slice(0, 2));
    process.stderr.write(
      `server-side at ${RATE} tokens/s: 8 tokens of a 12-token prompt in ${Math.round(ms)} ms; refused a second one with a hint of ${hint} ms\n`,
    );
  });
});
