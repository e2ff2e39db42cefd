import * as grpc from '@grpc/grpc-js';
import {
  AgentStatusRequest,
  GenerateRequest,
  GetStatusRequest,
  ListPlansRequest,
  SessionRequest,
  toWireTensor,
  WatchPlansRequest,
  type HostTensor,
  type Tensor,
} from '@tandem/protocol';
import { clearMessageProblem } from '@tandem/testkit';
import { rawServerStream, rawSession, rawUnary, stackForSuite, type Outcome, type Stack } from './corpus-stack';

// Bad-input corpus, gRPC surface (e2e/test/CORPUS.md): each case is one bad request to a real
// executor, planner or agent on 127.0.0.1 while a healthy split generation runs through the
// agent and the executor beside it. Each asserts the status code, that the message names the
// field and the rule (the parts listed), that it fits in 1 KiB, and that the healthy generation
// gives the one-process tokens.

const N_EMBD = 64;
const LONG = 'x'.repeat(20_000);
const ids = (...v: number[]): HostTensor => ({ dtype: 'int64', shape: [1, v.length], data: BigInt64Array.from(v, BigInt) });
const hidden = (t: number, fill = 0.5): HostTensor => ({ dtype: 'float32', shape: [1, t, N_EMBD], data: new Float32Array(t * N_EMBD).fill(fill) });
const wire = (t: HostTensor): Tensor => toWireTensor(t);
const enc = (m: SessionRequest): Buffer => Buffer.from(SessionRequest.encode(m).finish());
const open = (modelId = '', clientId = 't'): SessionRequest => ({ kind: { $case: 'open', value: { clientId, planEpoch: '0', modelId } } });
const step = (seq: string, stageBegin: number, stageEnd: number, input: Tensor | undefined, sample = false): SessionRequest => ({
  kind: { $case: 'step', value: { seq, stageBegin, stageEnd, input, sample } },
});
const gen = (seq: string, input: Tensor | undefined, maxNewTokens: number): SessionRequest => ({
  kind: { $case: 'generate', value: { seq, input, maxNewTokens } },
});
const put = (stage: number, offset: number, tokens: number, key?: Tensor, value?: Tensor): SessionRequest => ({
  kind: { $case: 'kvPut', value: { stage, offset, tokens, key, value } },
});
const take = (seq: string, stage: number, maxChunkBytes = 0): SessionRequest => ({ kind: { $case: 'kvTake', value: { seq, stage, maxChunkBytes } } });
/** Keys or values of `t` positions of the tiny model's attention stages: [1, 4 heads, t, 16]. */
const kvOf = (t: number, fill = 0.25): Tensor => wire({ dtype: 'float32', shape: [1, 4, t, 16], data: new Float32Array(64 * t).fill(fill) });

const S = '/tandem.executor.v1.ExecutorService/';
const P = '/tandem.planner.v1.PlannerService/';
const A = '/tandem.agent.v1.AgentService/';
const { INVALID_ARGUMENT: INVALID, FAILED_PRECONDITION: PRECONDITION } = grpc.status;

type Case = readonly [label: string, call: (s: Stack) => Promise<Outcome>, code: grpc.status, parts: readonly string[]];

/** Session cases: the messages after (or instead of) a valid open. */
const session =
  (...msgs: SessionRequest[]) =>
  (s: Stack): Promise<Outcome> =>
    rawSession(s.raw.executor, msgs.map(enc));
const sessionBytes =
  (...msgs: (SessionRequest | Buffer)[]) =>
  (s: Stack): Promise<Outcome> =>
    rawSession(
      s.raw.executor,
      msgs.map((m) => (Buffer.isBuffer(m) ? m : enc(m))),
    );
const agentGen =
  (r: Partial<GenerateRequest>) =>
  (s: Stack): Promise<Outcome> =>
    rawServerStream(s.raw.agent, `${A}Generate`, Buffer.from(GenerateRequest.encode({ input: undefined, maxNewTokens: 1, placement: '', ...r }).finish()));
const watch =
  (clientId: string) =>
  (s: Stack): Promise<Outcome> =>
    rawServerStream(s.raw.planner, `${P}WatchPlans`, Buffer.from(WatchPlansRequest.encode({ clientId }).finish()), 10_000, 1000);
const list =
  (r: Partial<ListPlansRequest>) =>
  (s: Stack): Promise<Outcome> =>
    rawUnary(s.raw.planner, `${P}ListPlans`, Buffer.from(ListPlansRequest.encode({ pageSize: 0, pageToken: '', ...r }).finish()));

const shape = (dims: unknown[], data: Buffer, dtype = 1): Tensor => ({ dtype, shape: dims, data }) as unknown as Tensor;

const executorCases: Case[] = [
  // OpenSession
  ['open of another model id', session(open('not-the-model')), PRECONDITION, ['open.model_id must be', "given 'not-the-model'"]],
  ['open of a 20,000-character model id', session(open(LONG)), PRECONDITION, ['open.model_id must be', '(20000 chars)']],
  ['open twice', session(open(), open()), PRECONDITION, ['open']],
  ['a step before open', session(step('1', 0, 1, wire(ids(1)))), PRECONDITION, ['open']],
  ['a generate before open', session(gen('1', wire(ids(1)), 1)), PRECONDITION, ['open']],
  ['an empty message (no kind)', session({ kind: undefined }), INVALID, ['message.kind must be open, step, generate, kv_put or kv_take', 'given nothing']],
  // Step: ranges
  ['stageBegin past the model', session(open(), step('1', 6, 7, wire(hidden(1)))), INVALID, ['step.stage_begin must be in 0..5', 'given 6']],
  ['stageEnd = stageBegin', session(open(), step('1', 2, 2, wire(hidden(1)))), INVALID, ['step.stage_end must be in 3..6', 'given 2']],
  ['stageEnd past the model', session(open(), step('1', 0, 9, wire(ids(1)))), INVALID, ['step.stage_end must be in 1..6', 'given 9']],
  ['stageEnd of 2^32-1', session(open(), step('1', 0, 0xffffffff, wire(ids(1)))), INVALID, ['step.stage_end must be in 1..6', 'given 4294967295']],
  ['sample without the head', session(open(), step('1', 0, 3, wire(ids(1)), true)), INVALID, ['step.sample must be false unless the range ends with the head']],
  // Step: seq
  [
    'seq that does not increase',
    session(open(), step('5', 0, 6, wire(ids(1)), true), step('5', 0, 6, wire(ids(2)), true)),
    INVALID,
    ['step.seq must increase', 'given 5'],
  ],
  [
    'seq that goes back',
    session(open(), step('9', 0, 6, wire(ids(1)), true), step('3', 0, 6, wire(ids(2)), true)),
    INVALID,
    ['step.seq must increase', 'given 3'],
  ],
  // Step: input
  ['a step without input', session(open(), step('1', 0, 1, undefined)), INVALID, ['step.input']],
  [
    'ids where a hidden state is due',
    session(open(), step('1', 3, 6, wire(ids(1, 2)), true)),
    INVALID,
    ['step.input.dtype must be DATA_TYPE_FLOAT32', 'stage 3'],
  ],
  ['a hidden state where ids are due', session(open(), step('1', 0, 6, wire(hidden(1)), true)), INVALID, ['step.input.dtype must be DATA_TYPE_INT64']],
  ['an unspecified dtype', session(open(), step('1', 0, 6, shape([1, 1], Buffer.alloc(8), 0), true)), INVALID, ['step.input.dtype']],
  ['an unknown dtype (7)', session(open(), step('1', 0, 6, shape([1, 1], Buffer.alloc(8), 7), true)), INVALID, ['step.input.dtype']],
  [
    'a hidden state of the wrong width',
    session(open(), step('1', 3, 6, wire({ dtype: 'float32', shape: [1, 1, 32], data: new Float32Array(32) }), true)),
    INVALID,
    ['step.input.shape must be [1, T>=1, 64]'],
  ],
  [
    'a batch of 2',
    session(open(), step('1', 3, 6, wire({ dtype: 'float32', shape: [2, 1, 64], data: new Float32Array(128) }), true)),
    INVALID,
    ['step.input.shape must be [1, T>=1, 64]'],
  ],
  [
    'ids of rank 1',
    session(open(), step('1', 0, 6, wire({ dtype: 'int64', shape: [2], data: new BigInt64Array(2) }), true)),
    INVALID,
    ['step.input.shape must be [1, T>=1]'],
  ],
  [
    'ids of zero tokens',
    session(open(), step('1', 0, 6, wire({ dtype: 'int64', shape: [1, 0], data: new BigInt64Array(0) }), true)),
    INVALID,
    ['step.input.shape must be [1, T>=1]'],
  ],
  ['a negative dimension', session(open(), step('1', 3, 6, shape([1, -1, 64], Buffer.alloc(0)), true)), INVALID, ['step.input.shape[1]', '-1']],
  [
    'data shorter than the shape',
    session(open(), step('1', 3, 6, shape([1, 2, 64], Buffer.alloc(4 * 64)), true)),
    INVALID,
    ['step.input.data must hold 512 bytes'],
  ],
  [
    'data longer than the shape',
    session(open(), step('1', 3, 6, shape([1, 1, 64], Buffer.alloc(4 * 65)), true)),
    INVALID,
    ['step.input.data must hold 256 bytes'],
  ],
  ['data of an odd byte count', session(open(), step('1', 3, 6, shape([1, 1, 64], Buffer.alloc(255)), true)), INVALID, ['step.input.data must hold 256 bytes']],
  ['a token id past the vocabulary', session(open(), step('1', 0, 6, wire(ids(50_257)), true)), INVALID, ['token ids must be in 0..50256', 'given 50257']],
  ['a negative token id', session(open(), step('1', 0, 6, wire(ids(-1)), true)), INVALID, ['token ids must be in 0..50256', 'given -1']],
  [
    'a NaN in a hidden state',
    session(open(), step('1', 3, 6, wire({ dtype: 'float32', shape: [1, 1, N_EMBD], data: new Float32Array(N_EMBD).fill(Number.NaN) }), true)),
    INVALID,
    ['step.input must hold finite float32 values', 'at index 0'],
  ],
  [
    'an Infinity in a hidden state',
    session(
      open(),
      step('1', 3, 6, wire({ dtype: 'float32', shape: [1, 1, N_EMBD], data: Float32Array.from({ length: N_EMBD }, (_, i) => (i === 9 ? Infinity : 0)) }), true),
    ),
    INVALID,
    ['step.input must hold finite float32 values', 'at index 9'],
  ],
  [
    'a prompt over the context',
    session(open(), step('1', 0, 6, wire(ids(...new Array<number>(65).fill(1))), true)),
    PRECONDITION,
    ['context must stay <= 64 tokens'],
  ],
  [
    'a decode step past the context',
    session(open(), step('1', 0, 6, wire(ids(...new Array<number>(64).fill(1))), true), step('2', 0, 6, wire(ids(1)), true)),
    PRECONDITION,
    ['context must stay <= 64 tokens'],
  ],
  [
    'a step at a later stage than the prefill',
    session(open(), step('1', 0, 6, wire(ids(1, 2)), true), step('2', 3, 6, wire(hidden(1)), true)),
    PRECONDITION,
    ['step.stage_begin must be 0', 'given 3'],
  ],
  // ServerGenerate
  ['generate of maxNewTokens 0', session(open(), gen('1', wire(ids(1)), 0)), INVALID, ['generate.max_new_tokens must be >= 1', 'given 0']],
  ['generate over the context', session(open(), gen('1', wire(ids(1, 2)), 64)), PRECONDITION, ['the context must stay <= 64 tokens']],
  ['generate of maxNewTokens 2^32-1', session(open(), gen('1', wire(ids(1, 2)), 0xffffffff)), PRECONDITION, ['the context must stay <= 64 tokens']],
  ['generate without input', session(open(), gen('1', undefined, 1)), INVALID, ['generate.input']],
  ['generate of a hidden state', session(open(), gen('1', wire(hidden(1)), 1)), INVALID, ['generate.input']],
  [
    'generate of ids past the vocabulary',
    session(open(), gen('1', wire(ids(1, 60_000)), 1)),
    INVALID,
    ['generate.input token ids must be in 0..50256', 'given 60000'],
  ],
  [
    'generate of a 2-d shape [1, 0]',
    session(open(), gen('1', wire({ dtype: 'int64', shape: [1, 0], data: new BigInt64Array(0) }), 1)),
    INVALID,
    ['generate.input.shape must be [1, T>=1]'],
  ],
  [
    'generate after a step that ran only some stages',
    session(open(), step('1', 0, 3, wire(ids(1))), gen('2', wire(ids(1)), 1)),
    PRECONDITION,
    ['generate must be the first message after open, or continue a handed-over prefill', 'stage 3 holding 0'],
  ],
  // KvPut, KvTake (phased plans)
  [
    'kv_put of keys as int64',
    session(open(), put(1, 0, 1, wire(ids(1, 2, 3, 4)), kvOf(1))),
    INVALID,
    ['kv_put.key.dtype must be DATA_TYPE_FLOAT32', 'DATA_TYPE_INT64'],
  ],
  [
    'kv_put of keys of the wrong shape',
    session(open(), put(1, 0, 3, kvOf(2), kvOf(3))),
    INVALID,
    ['kv_put.key.shape must be [1, 4, 3, 16]', 'given [1, 4, 2, 16]'],
  ],
  [
    'kv_put of a NaN value',
    session(open(), put(1, 0, 1, kvOf(1), kvOf(1, Number.NaN))),
    INVALID,
    ['kv_put.value must hold finite float32 values', 'given NaN'],
  ],
  ['kv_put of an attention stage without keys', session(open(), put(1, 0, 1, undefined, kvOf(1))), INVALID, ['kv_put.key is required for attention stage 1']],
  ['kv_put of an MLP stage with keys', session(open(), put(2, 0, 1, kvOf(1), kvOf(1))), INVALID, ['kv_put.key must be absent for stage 2', 'given a tensor']],
  ['kv_put of a stage past the model', session(open(), put(6, 0, 1)), INVALID, ['kv_put.stage must be in 0..5', 'given 6']],
  ['kv_put of 0 tokens', session(open(), put(2, 0, 0)), INVALID, ['kv_put.tokens must be >= 1', 'given 0']],
  ['kv_put with a gap', session(open(), put(2, 0, 2), put(2, 3, 1)), PRECONDITION, ['kv_put.offset must be 2', 'given 3']],
  ['kv_put past the context', session(open(), put(2, 0, 65)), PRECONDITION, ['kv_put would make stage 2 hold 65 tokens', 'context must stay <= 64 tokens']],
  [
    'kv_put into a stage a step ran',
    session(open(), step('1', 0, 6, wire(ids(1)), true), put(1, 1, 1, kvOf(1), kvOf(1))),
    PRECONDITION,
    ['kv_put.stage 1 holds 1 tokens', 'may be put only into a stage holding none'],
  ],
  ['kv_put after generate', session(open(), gen('1', wire(ids(1)), 60), put(2, 0, 1)), PRECONDITION, ['kv_put may not follow generate']],
  ['kv_take of a stage past the model', session(open(), take('1', 0xffffffff)), INVALID, ['kv_take.stage must be in 0..5', 'given 4294967295']],
  ['kv_take of an empty stage', session(open(), take('1', 3)), PRECONDITION, ['kv_take.stage 3 must hold at least one token']],
  ['kv_take of a seq that does not increase', session(open(), step('4', 0, 2, wire(ids(1))), take('4', 1)), INVALID, ['kv_take.seq must increase', 'given 4']],
  // undecodable bytes
  ['a truncated length-delimited field', sessionBytes(open(), Buffer.from([0x12, 0xff, 0x01])), INVALID, ['SessionRequest', 'protobuf']],
  [
    'a varint of 11 bytes',
    sessionBytes(open(), Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])),
    INVALID,
    ['message.kind must be open, step, generate, kv_put or kv_take'],
  ],
  ['a length of 2^31 in a nested tensor', sessionBytes(open(), Buffer.from([0x12, 0x06, 0x22, 0x04, 0x1a, 0x80, 0x80, 0x80])), INVALID, ['SessionRequest']],
  ['wire type 7 (invalid)', sessionBytes(open(), Buffer.from([0x0f, 0x00])), INVALID, ['SessionRequest']],
  [
    'GetStatus of bytes that are no GetStatusRequest',
    (s) => rawUnary(s.raw.executor, `${S}GetStatus`, Buffer.from([0x0a, 0x7f])),
    INVALID,
    ['GetStatusRequest'],
  ],
];

const plannerCases: Case[] = [
  ['WatchPlans of an empty client id', watch(''), INVALID, ['client_id must match', "given ''"]],
  ['WatchPlans of a client id with a dot', watch('a.b'), INVALID, ['client_id must match', "'a.b'"]],
  ['WatchPlans of a client id with a wildcard', watch('*'), INVALID, ['client_id must match', "'*'"]],
  ['WatchPlans of a 65-character client id', watch('c'.repeat(65)), INVALID, ['client_id must match']],
  ['WatchPlans of a 20,000-character client id', watch(LONG), INVALID, ['client_id must match', "given 'xxxxxxxx"]],
  [
    'WatchPlans of bytes that are no request',
    (s) => rawServerStream(s.raw.planner, `${P}WatchPlans`, Buffer.from([0x0a, 0x05, 0x61])),
    INVALID,
    ['WatchPlans request', 'protobuf'],
  ],
  ['ListPlans of a page token it did not issue', list({ pageToken: 'nonsense!' }), INVALID, ['page_token must be a next_page_token', "'nonsense!'"]],
  ['ListPlans of a 20,000-character page token', list({ pageToken: LONG }), INVALID, ['page_token must be a next_page_token', "given 'xxxxxxxx"]],
  [
    'ListPlans of bytes that are no request',
    (s) => rawUnary(s.raw.planner, `${P}ListPlans`, Buffer.from([0x12, 0x09, 0x61])),
    INVALID,
    ['ListPlans request', 'protobuf'],
  ],
];

const agentCases: Case[] = [
  ['Generate without input', agentGen({ maxNewTokens: 2 }), INVALID, ['input must be a prompt or ids, given neither']],
  ['Generate of an empty prompt', agentGen({ input: { $case: 'prompt', value: '' }, maxNewTokens: 2 }), INVALID, ['prompt must be non-empty text']],
  ['Generate of no ids', agentGen({ input: { $case: 'ids', value: { ids: [] } }, maxNewTokens: 2 }), INVALID, ['ids must hold at least one token id']],
  [
    'Generate of an id past the vocabulary',
    agentGen({ input: { $case: 'ids', value: { ids: [1, 50_257] } }, maxNewTokens: 2 }),
    INVALID,
    ['ids[1] must be in 0..50256', 'given 50257'],
  ],
  [
    'Generate of id 2^32-1',
    agentGen({ input: { $case: 'ids', value: { ids: [0xffffffff] } }, maxNewTokens: 2 }),
    INVALID,
    ['ids[0] must be in 0..50256', 'given 4294967295'],
  ],
  [
    'Generate of maxNewTokens 0',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 0 }),
    INVALID,
    ['max_new_tokens must be in 1..', 'given 0'],
  ],
  [
    'Generate of maxNewTokens 2^32-1',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 0xffffffff }),
    INVALID,
    ['max_new_tokens must be in 1..1024', 'given 4294967295'],
  ],
  [
    'Generate of a prompt over the context',
    agentGen({ input: { $case: 'ids', value: { ids: new Array<number>(1025).fill(1) } }, maxNewTokens: 1 }),
    INVALID,
    ['the prompt must fit the context of 1024 tokens', 'given 1025 tokens'],
  ],
  [
    'Generate of a placement too short',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 1, placement: 'CS' }),
    INVALID,
    ['placement must be 6 letters C or S', "given 'CS'"],
  ],
  [
    'Generate of a placement with other letters',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 1, placement: 'CCXSSC' }),
    INVALID,
    ['placement must be 6 letters C or S', "given 'CCXSSC'"],
  ],
  [
    'Generate of a lower-case placement',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 1, placement: 'ccsssc' }),
    INVALID,
    ['placement must be 6 letters C or S', "given 'ccsssc'"],
  ],
  [
    'Generate of a 20,000-character placement',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 1, placement: 'S'.repeat(20_000) }),
    INVALID,
    ['placement must be 6 letters C or S', '(20000 chars)'],
  ],
  [
    'Generate of a decode placement without a placement',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 2, decodePlacement: 'CCSSSC' }),
    INVALID,
    ['decode_placement must come with placement', "given 'CCSSSC' alone"],
  ],
  [
    'Generate of a decode placement too short',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 2, placement: 'CCSSSC', decodePlacement: 'CS' }),
    INVALID,
    ['decode_placement must be 6 letters C or S', "given 'CS'"],
  ],
  [
    'Generate of a decode placement with other letters',
    agentGen({ input: { $case: 'ids', value: { ids: [1] } }, maxNewTokens: 2, placement: 'CCSSSC', decodePlacement: 'CCXSSC' }),
    INVALID,
    ['decode_placement must be 6 letters C or S', "given 'CCXSSC'"],
  ],
  [
    'Generate whose decode passes the executor context (64)',
    agentGen({ input: { $case: 'ids', value: { ids: [1, 2] } }, maxNewTokens: 100, placement: 'CCSSSC' }),
    PRECONDITION,
    ['executor: ', 'context must stay <= 64 tokens'],
  ],
  [
    'Generate of bytes that are no request',
    (s) => rawServerStream(s.raw.agent, `${A}Generate`, Buffer.from([0x12, 0xff])),
    INVALID,
    ['Generate request', 'protobuf'],
  ],
  ['GetStatus of bytes that are no request', (s) => rawUnary(s.raw.agent, `${A}GetStatus`, Buffer.from([0x0a, 0x7f])), INVALID, ['GetStatus']],
];

export const GRPC_CASES = executorCases.length + plannerCases.length + agentCases.length;

describe('gRPC bad-input corpus against the real services, a healthy generation beside each', () => {
  let stack: Stack;
  stackForSuite((s) => (stack = s));

  it('runs the healthy generation on its own with the one-process tokens', async () => {
    expect(await stack.healthy()).toEqual(stack.expected);
    // every request message has a corpus case that decodes to the empty request of the other method
    expect(AgentStatusRequest.encode({}).finish()).toHaveLength(0);
    expect(GetStatusRequest.encode({}).finish()).toHaveLength(0);
  });

  describe.each([
    ['executor', executorCases],
    ['planner', plannerCases],
    ['agent', agentCases],
  ] as const)('%s', (_svc, cases) => {
    it.each(cases)('refuses %s', async (_label, call, code, parts) => {
      const o = await stack.beside(() => call(stack));
      expect({ code: grpc.status[o.code], problem: clearMessageProblem(o.details, parts) }).toEqual({ code: grpc.status[code], problem: '' });
    });
  });

  it('still serves after the corpus: health SERVING everywhere and the healthy tokens', async () => {
    expect(await stack.serving()).toBe(true);
    expect(await stack.healthy()).toEqual(stack.expected);
  });
});
