import * as grpc from '@grpc/grpc-js';
import {
  ClientProfile,
  GenerateRequest,
  GenerationOutcome,
  ListPlansRequest,
  ServerLoad,
  SessionRequest,
  Subjects,
  toWireTensor,
  WatchPlansRequest,
  type HostTensor,
} from '@tandem/protocol';
import { eventually, seededRandom } from '@tandem/testkit';
import { rawServerStream, rawSession, rawUnary, stackForSuite, stackLoad, stackOutcome, stackProfile, type Outcome, type Stack } from './corpus-stack';
import { mutate, type Rnd } from './fuzz-mutate';

// Fuzz of the decode and validation paths (e2e/test/CORPUS.md): random mutations of valid
// encoded messages on every gRPC method and NATS subject, against the real services.
// TANDEM_FUZZ_CASES (default 2400) cases in all, TANDEM_FUZZ_SEED to replay a run; the seed is
// printed in every failure. Asserts: no crash, no hang (each call ends within its deadline),
// every refusal a clear status (never UNKNOWN or INTERNAL) with a message of 1..1024 bytes, and
// the services still serve the healthy generation (one-process tokens) afterwards.

const CASES = Number(process.env.TANDEM_FUZZ_CASES ?? 2400);
const SEED = Number(process.env.TANDEM_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const CONCURRENCY = 16;
/** Every call must end within this (a hang otherwise), ms; the generations are at most 64 tokens of the tiny model. */
const DEADLINE_MS = 20_000;
const CLEAR = new Set([
  grpc.status.OK,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.OUT_OF_RANGE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.NOT_FOUND,
]);

const ids = (...v: number[]): HostTensor => ({ dtype: 'int64', shape: [1, v.length], data: BigInt64Array.from(v, BigInt) });
const hidden = (t: number): HostTensor => ({ dtype: 'float32', shape: [1, t, 64], data: new Float32Array(t * 64).fill(0.25) });
const enc = (m: SessionRequest): Uint8Array => SessionRequest.encode(m).finish();
const OPEN = enc({ kind: { $case: 'open', value: { clientId: 'fuzz', planEpoch: '7', modelId: '' } } });

/** Valid Session streams; one message of each is mutated per case. */
const SESSIONS: Uint8Array[][] = [
  [OPEN],
  [OPEN, enc({ kind: { $case: 'step', value: { seq: '1', stageBegin: 0, stageEnd: 6, input: toWireTensor(ids(464, 2068, 7586)), sample: true } } })],
  [
    OPEN,
    enc({ kind: { $case: 'step', value: { seq: '1', stageBegin: 0, stageEnd: 3, input: toWireTensor(ids(464, 2068)), sample: false } } }),
    enc({ kind: { $case: 'step', value: { seq: '2', stageBegin: 3, stageEnd: 6, input: toWireTensor(hidden(2)), sample: true } } }),
  ],
  [OPEN, enc({ kind: { $case: 'step', value: { seq: '1', stageBegin: 3, stageEnd: 6, input: toWireTensor(hidden(1)), sample: true } } })],
  [OPEN, enc({ kind: { $case: 'generate', value: { seq: '1', input: toWireTensor(ids(464, 2068)), maxNewTokens: 3 } } })],
];

const GENERATE: Uint8Array[] = [
  GenerateRequest.encode({ input: { $case: 'ids', value: { ids: [464, 2068, 7586] } }, maxNewTokens: 2, placement: 'CCSSSC' }).finish(),
  GenerateRequest.encode({ input: { $case: 'prompt', value: 'The quick' }, maxNewTokens: 2, placement: '' }).finish(),
  GenerateRequest.encode({ input: { $case: 'ids', value: { ids: [1, 2] } }, maxNewTokens: 3, placement: 'SSSSSS' }).finish(),
];

const pick = <T>(rnd: Rnd, xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];

interface Failure {
  target: string;
  index: number;
  how: string[];
  hex: string;
  problem: string;
}

/** Checks one call's end; '' when clear. */
function judge(o: Outcome): string {
  if (!CLEAR.has(o.code)) return `status ${grpc.status[o.code]}: ${o.details.slice(0, 300)}`;
  if (o.code === grpc.status.OK) return '';
  const bytes = Buffer.byteLength(o.details, 'utf8');
  if (bytes === 0 || bytes > 1024 || !/[A-Za-z]{3}/.test(o.details))
    return `${grpc.status[o.code]} with a message of ${bytes} bytes: ${o.details.slice(0, 300)}`;
  return '';
}

function report(failures: Failure[]): string {
  return `fuzz seed ${SEED} (replay: TANDEM_FUZZ_SEED=${SEED} TANDEM_FUZZ_CASES=${CASES}): ${failures.length} failure(s)\n${failures
    .slice(0, 10)
    .map((f) => `  ${f.target} #${f.index} [${f.how.join(', ')}] ${f.hex.slice(0, 160)}: ${f.problem}`)
    .join('\n')}`;
}

/** Runs `n` cases of `target` with at most CONCURRENCY in flight; returns the failures. */
async function fuzz(target: string, n: number, rnd: Rnd, one: (rnd: Rnd) => { how: string[]; bytes: Buffer; run: () => Promise<Outcome> }): Promise<Failure[]> {
  const failures: Failure[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      const index = next++;
      const c = one(rnd);
      const problem = judge(await c.run());
      if (problem) failures.push({ target, index, how: c.how, hex: c.bytes.toString('hex'), problem });
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return failures;
}

describe(`fuzz of every gRPC method and NATS subject (seed ${SEED}, ${CASES} cases)`, () => {
  let stack: Stack;
  const rnd = seededRandom(SEED);
  // gRPC methods get 3/4 of the cases (Session and Generate the most), NATS subjects the rest.
  const share = (w: number): number => Math.max(10, Math.round((CASES * w) / 100));

  stackForSuite((s) => (stack = s));

  const grpcTargets: [string, number, (rnd: Rnd) => { how: string[]; bytes: Buffer; run: () => Promise<Outcome> }][] = [
    [
      'executor Session',
      25,
      (r) => {
        const msgs: Buffer[] = pick(r, SESSIONS).map((m) => Buffer.from(m));
        const at = Math.floor(r() * msgs.length);
        const m = mutate(msgs[at], r);
        msgs[at] = m.bytes;
        return { ...m, run: () => rawSession(stack.raw.executor, msgs, DEADLINE_MS) };
      },
    ],
    [
      'executor GetStatus',
      6,
      (r) => {
        const m = mutate(new Uint8Array(0), r);
        return { ...m, run: () => rawUnary(stack.raw.executor, '/tandem.executor.v1.ExecutorService/GetStatus', m.bytes, DEADLINE_MS) };
      },
    ],
    [
      'planner WatchPlans',
      10,
      (r) => {
        const m = mutate(WatchPlansRequest.encode({ clientId: pick(r, ['dev-1', 'fuzz-client', 'x']) }).finish(), r);
        return { ...m, run: () => rawServerStream(stack.raw.planner, '/tandem.planner.v1.PlannerService/WatchPlans', m.bytes, DEADLINE_MS, 200) };
      },
    ],
    [
      'planner ListPlans',
      8,
      (r) => {
        const m = mutate(ListPlansRequest.encode({ pageSize: pick(r, [0, 1, 100]), pageToken: pick(r, ['', 'ZGV2LTE']) }).finish(), r);
        return { ...m, run: () => rawUnary(stack.raw.planner, '/tandem.planner.v1.PlannerService/ListPlans', m.bytes, DEADLINE_MS) };
      },
    ],
    [
      'agent Generate',
      18,
      (r) => {
        const m = mutate(pick(r, GENERATE), r);
        return { ...m, run: () => rawServerStream(stack.raw.agent, '/tandem.agent.v1.AgentService/Generate', m.bytes, DEADLINE_MS) };
      },
    ],
    [
      'agent GetStatus',
      6,
      (r) => {
        const m = mutate(new Uint8Array(0), r);
        return { ...m, run: () => rawUnary(stack.raw.agent, '/tandem.agent.v1.AgentService/GetStatus', m.bytes, DEADLINE_MS) };
      },
    ],
  ];

  it.each(grpcTargets)(
    '%s: every mutated request ends in time with a clear status',
    async (target, weight, one) => {
      const failures = await fuzz(target, share(weight), rnd, one);
      if (failures.length) throw new Error(report(failures));
    },
    120_000,
  );

  it('NATS: the planner counts or takes every mutated telemetry message, logs each drop in under 1 KiB, and keeps planning', async () => {
    const profile = (id: string): ClientProfile => stackProfile(stack, id);
    const load = stackLoad(stack, 'fz-exec');
    const outcome = stackOutcome(stack, 'fz-c');
    const subjects: [string, Uint8Array, (id: string) => string][] = [
      ['ClientProfile', ClientProfile.encode(profile('fz-c')).finish(), Subjects.clientProfile],
      ['ServerLoad', ServerLoad.encode(load).finish(), Subjects.serverLoad],
      ['GenerationOutcome', GenerationOutcome.encode(outcome).finish(), Subjects.outcome],
    ];
    const c = stack.planner.counters;
    const handled = (): number => c.profiles + c.loads + c.outcomes + c.strayOutcomes + c.badMessages;
    const before = handled();
    const n = share(25);
    for (let i = 0; i < n; i++) {
      const [, valid, subjectOf] = pick(rnd, subjects);
      // mostly the sender's own subject; sometimes another id's (refused as spoofed) or a long one
      const id = pick(rnd, ['fz-c', 'fz-c', 'fz-c', 'fz-exec', 'other-1', 'a'.repeat(64)]);
      stack.tap.publish(subjectOf(id), rnd() < 0.9 ? mutate(valid, rnd).bytes : valid);
      if (i % 200 === 199) await stack.tap.flush();
    }
    await stack.tap.flush();
    // every message is taken or dropped with a count: none vanishes into an exception
    await eventually(() => handled() - before >= n, { timeoutMs: 30_000, what: `${n} telemetry messages handled (seed ${SEED})` });
    const drops = stack.logLines().filter((l) => l.msg === 'dropped a telemetry message');
    const long = drops.filter((l) => Buffer.byteLength(String(l.err)) > 1024 || !/must|decode/.test(String(l.err)));
    expect({ seed: SEED, unclearDrops: long.slice(0, 3) }).toEqual({ seed: SEED, unclearDrops: [] });
    // the planner keeps planning: a good profile of a new client gets a plan
    stack.tap.publish(Subjects.clientProfile('fz-after'), ClientProfile.encode(profile('fz-after')).finish());
    await eventually(() => stack.planner.plans().some((p) => p.clientId === 'fz-after'), { what: `a plan after the fuzz (seed ${SEED})` });
  }, 120_000);

  it('every service still serves, and the healthy generation gives the one-process tokens', async () => {
    expect(await stack.serving()).toBe(true);
    expect(await stack.healthy()).toEqual(stack.expected);
    expect(stack.logLines().filter((l) => l.level >= 60)).toEqual([]);
  });
});
