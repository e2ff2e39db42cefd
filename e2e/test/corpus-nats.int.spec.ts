import { ClientProfile, GenerationOutcome, OutcomeStatus, ServerLoad, Subjects } from '@tandem/protocol';
import { clearMessageProblem, eventually } from '@tandem/testkit';
import { stackForSuite, stackLoad, stackOutcome, stackProfile, type Stack } from './corpus-stack';

// Bad-input corpus, NATS surface (e2e/test/CORPUS.md): each case publishes one bad telemetry
// payload (or a good one on another sender's subject) to a real nats-server, while a healthy
// split generation runs through the agent and the executor. Each asserts that the planner drops
// it counted under its reason (Type.field:rule, the planner's "status"), that the logged reason
// names the field and the rule and fits in 1 KiB, and that the healthy generation gives the
// one-process tokens; after the corpus the planner still plans a new client. It publishes as the
// test's own NATS user (TAP_USER in e2e/test/credentials.ts), which may publish on every telemetry
// subject: what a sender may publish is nats-server's check, what it says is the planner's.

const LONG = 'x'.repeat(20_000);

describe('NATS bad-input corpus against a real planner, a healthy generation beside each', () => {
  let stack: Stack;
  stackForSuite((s) => (stack = s));

  /** What makes a good message bad: fields set on it, or a function that changes it. */
  type Change<T> = Partial<T> | ((m: T) => void);
  /**
   * The cases' messages of one type: the good message of `ownId` (`good`) changed by a case,
   * encoded, on `subject` of `subjectId` (the message's own id unless the case says otherwise).
   */
  const changed =
    <T extends object>(good: (id: string) => T, type: { encode(m: T): { finish(): Uint8Array } }, subject: (id: string) => string, ownId: string) =>
    (change: Change<T>, subjectId = ownId) =>
    (): [string, Uint8Array] => {
      const m = good(ownId);
      if (typeof change === 'function') change(m);
      else Object.assign(m, change);
      return [subject(subjectId), type.encode(m).finish()];
    };
  /** A change that sets `fields` on stage `i` of a message's stages. */
  const stage =
    <S extends object>(i: number, fields: S) =>
    (m: { stages: S[] }): void => {
      Object.assign(m.stages[i], fields);
    };
  const P = changed((id) => stackProfile(stack, id), ClientProfile, Subjects.clientProfile, 'np-c');
  const L = changed((id) => stackLoad(stack, id), ServerLoad, Subjects.serverLoad, 'np-exec');
  const O = changed((id) => stackOutcome(stack, id), GenerationOutcome, Subjects.outcome, 'np-c');
  const bytes = (subject: string, b: number[]) => (): [string, Uint8Array] => [subject, new Uint8Array(b)];

  type Case = readonly [label: string, msg: () => [string, Uint8Array], reason: string, parts: readonly string[]];
  const cases: Case[] = [
    // ClientProfile
    [
      'profile: a stage time of 1e308',
      P(stage(1, { prefillMsPerToken: 1e308 })),
      'ClientProfile.stages[].prefillMsPerToken:range',
      ['ClientProfile.stages[1].prefillMsPerToken must be a finite number in', '1e+308'],
    ],
    [
      'profile: a NaN decode time',
      P(stage(0, { decodeMs: Number.NaN })),
      'ClientProfile.stages[].decodeMs:range',
      ['ClientProfile.stages[0].decodeMs must be a finite number', 'NaN'],
    ],
    [
      'profile: a negative decode time',
      P(stage(2, { decodeMs: -1 })),
      'ClientProfile.stages[].decodeMs:range',
      ['ClientProfile.stages[2].decodeMs must be', '-1'],
    ],
    [
      'profile: a stage listed twice',
      P(stage(1, { stage: 0 })),
      'ClientProfile.stages[].stage:unique',
      ['ClientProfile.stages[1].stage must list each stage once'],
    ],
    [
      'profile: a stage past the model',
      P(stage(2, { stage: 99 })),
      'ClientProfile.stages[].stage:range',
      ['ClientProfile.stages[2].stage must be in 0..5', '99'],
    ],
    [
      'profile: an uplink of 0 bytes/ms',
      P({ uplink: { latencyMs: 1, bytesPerMs: 0 } }),
      'ClientProfile.uplink.bytesPerMs:positive',
      ['ClientProfile.uplink.bytesPerMs must be > 0'],
    ],
    [
      'profile: an infinite downlink',
      P({ downlink: { latencyMs: 1, bytesPerMs: Infinity } }),
      'ClientProfile.downlink.bytesPerMs:range',
      ['ClientProfile.downlink.bytesPerMs must be a finite number', 'Infinity'],
    ],
    [
      'profile: a link latency of 1e9 ms',
      P({ uplink: { latencyMs: 1e9, bytesPerMs: 10 } }),
      'ClientProfile.uplink.latencyMs:range',
      ['ClientProfile.uplink.latencyMs must be a finite number'],
    ],
    [
      'profile: a negative downlink latency',
      P({ downlink: { latencyMs: -5, bytesPerMs: 10 } }),
      'ClientProfile.downlink.latencyMs:range',
      ['ClientProfile.downlink.latencyMs must be a finite number', '-5'],
    ],
    ['profile: an empty model id', P({ modelId: '' }), 'ClientProfile.modelId:required', ['ClientProfile.modelId must name the model']],
    ['profile: another model id', P({ modelId: 'other' }), 'ClientProfile.modelId:model', ['ClientProfile.modelId must be', "'other'"]],
    ['profile: a 20,000-character model id', P({ modelId: LONG }), 'ClientProfile.modelId:length', ['ClientProfile.modelId must be at most']],
    ['profile: a 20,000-character client class', P({ clientClass: LONG }), 'ClientProfile.clientClass:length', ['ClientProfile.clientClass must be at most']],
    ["profile: another client's subject", P({}, 'np-other'), 'ClientProfile.clientId:subject', ['ClientProfile.clientId must match the subject', "'np-c'"]],
    ['profile: a 20,000-character client id', P({ clientId: LONG }), 'ClientProfile.clientId:pattern', ['ClientProfile.clientId must match']],
    [
      'profile: bytes that do not decode',
      bytes(Subjects.clientProfile('np-c'), [0x0a, 0xff, 0xff, 0x03]),
      'ClientProfile:decode',
      ['ClientProfile does not decode'],
    ],
    // the decoder reads an overlong varint and a length of 2^32 (as 0) leniently: the empty message that results is refused by its id
    [
      'profile: a varint of 11 bytes (decodes to an empty profile)',
      bytes(Subjects.clientProfile('np-c'), [0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
      'ClientProfile.clientId:pattern',
      ['ClientProfile.clientId must match', "given ''"],
    ],
    // ServerLoad
    [
      'load: a stage time of 1e308',
      L(stage(0, { prefillMsPerToken: 1e308 })),
      'ServerLoad.stages[].prefillMsPerToken:range',
      ['ServerLoad.stages[0].prefillMsPerToken must be a finite number'],
    ],
    [
      'load: a stage left out',
      L((l) => {
        l.stages.pop();
      }),
      'ServerLoad.stages:count',
      ['ServerLoad.stages must list all 6 stages', '5 stages'],
    ],
    ['load: stages out of order', L(stage(1, { stage: 2 })), 'ServerLoad.stages[].stage:order', ['ServerLoad.stages[1].stage must be 1', '2']],
    ['load: utilisation 1.5', L({ utilisation: 1.5 }), 'ServerLoad.utilisation:range', ['ServerLoad.utilisation must be a finite number in 0..1', '1.5']],
    [
      'load: a NaN utilisation',
      L({ utilisation: Number.NaN }),
      'ServerLoad.utilisation:range',
      ['ServerLoad.utilisation must be a finite number in 0..1', 'NaN'],
    ],
    ['load: a queue wait of 1e300 ms', L({ meanQueueMs: 1e300 }), 'ServerLoad.meanQueueMs:range', ['ServerLoad.meanQueueMs must be a finite number']],
    [
      'load: a decode stretch of 0.5',
      L({ decodeStretch: 0.5 }),
      'ServerLoad.decodeStretch:range',
      ['ServerLoad.decodeStretch must be a finite number in 1..', '0.5'],
    ],
    [
      'load: an infinite long-prompt stretch',
      L({ longPromptStretch: Infinity }),
      'ServerLoad.longPromptStretch:range',
      ['ServerLoad.longPromptStretch must be a finite number', 'Infinity'],
    ],
    ['load: long steps of 1e9 tokens', L({ longStepTokens: 1e9 }), 'ServerLoad.longStepTokens:range', ['ServerLoad.longStepTokens must be a finite number']],
    [
      'load: an overhead of 1e12 ms per KiB',
      L({ overhead: { msPerMessageIn: 0, msPerMessageOut: 0, msPerKibIn: 1e12, msPerKibOut: 0, idleMsPerS: 0, samples: 20 } }),
      'ServerLoad.overhead.msPerKibIn:range',
      ['ServerLoad.overhead.msPerKibIn must be a finite number'],
    ],
    ['load: an empty model id', L({ modelId: '' }), 'ServerLoad.modelId:required', ['ServerLoad.modelId must name the model']],
    ["load: another executor's subject", L({}, 'np-spoofed'), 'ServerLoad.serverId:subject', ['ServerLoad.serverId must match the subject', "'np-exec'"]],
    ['load: a server id with a dot', L({ serverId: 'a.b' }), 'ServerLoad.serverId:pattern', ['ServerLoad.serverId must match', "'a.b'"]],
    ['load: bytes that do not decode', bytes(Subjects.serverLoad('np-exec'), [0xff, 0xff, 0xff, 0x07]), 'ServerLoad:decode', ['ServerLoad does not decode']],
    // GenerationOutcome
    ['outcome: an empty model id', O({ modelId: '' }), 'GenerationOutcome.modelId:required', ['GenerationOutcome.modelId must name the model']],
    ['outcome: another model id', O({ modelId: 'other' }), 'GenerationOutcome.modelId:model', ['modelId must be', "'other'"]],
    ["outcome: another client's subject", O({}, 'np-other'), 'GenerationOutcome.clientId:invalid', ['clientId must match the subject', "'np-c'"]],
    [
      'outcome: an unknown request class',
      O({ requestClass: 'huge' }),
      'GenerationOutcome.requestClass:invalid',
      ['requestClass must be one of short', "'huge'"],
    ],
    ['outcome: a placement of 3 letters', O({ placement: 'CSC' }), 'GenerationOutcome.placement:invalid', ['placement must be 6 letters C or S', "'CSC'"]],
    ['outcome: plan epoch 0', O({ planEpoch: 0 }), 'GenerationOutcome.planEpoch:invalid', ['planEpoch must be an integer >= 1', '0']],
    [
      'outcome: an unknown status',
      O({ status: 7 as OutcomeStatus }),
      'GenerationOutcome.status:invalid',
      ['status must be OUTCOME_STATUS_OK or OUTCOME_STATUS_FAILED', '7'],
    ],
    ['outcome: 0 prompt tokens', O({ promptTokens: 0 }), 'GenerationOutcome.promptTokens:invalid', ['promptTokens must be >= 1', '0']],
    ['outcome: 2^32-1 new tokens', O({ newTokens: 0xffffffff }), 'GenerationOutcome.newTokens:invalid', ['newTokens must be at most', '4294967295']],
    ['outcome: an OK one of 0 new tokens', O({ newTokens: 0 }), 'GenerationOutcome.newTokens:invalid', ['newTokens must be >= 1 for status OUTCOME_STATUS_OK']],
    ['outcome: slaMet that contradicts the figures', O({ slaMs: 5 }), 'GenerationOutcome.slaMet:invalid', ['slaMet must be false for slaMs 5']],
    [
      'outcome: a length of 2^32 (decodes to an empty outcome)',
      bytes(Subjects.outcome('np-c'), [0x12, 0x80, 0x80, 0x80, 0x80, 0x10]),
      'GenerationOutcome.clientId:invalid',
      ['clientId must match', "given ''"],
    ],
    [
      'outcome: bytes that do not decode',
      bytes(Subjects.outcome('np-c'), [0x12, 0x7f, 0x61]),
      'GenerationOutcome:decode',
      ['GenerationOutcome does not decode'],
    ],
  ];

  it.each(cases)('drops %s, counted by reason, named in under 1 KiB', async (_label, msg, reason, parts) => {
    const c = stack.planner.counters;
    const before = c.dropped[reason] ?? 0;
    await stack.beside(async () => {
      const [subject, payload] = msg();
      stack.tap.publish(subject, payload);
      await eventually(() => (c.dropped[reason] ?? 0) === before + 1, { what: `a drop counted as ${reason}` });
    });
    const line = stack
      .logLines()
      .filter((l) => l.msg === 'dropped a telemetry message' && l.reason === reason)
      .pop();
    expect(clearMessageProblem(String(line?.err), parts)).toBe('');
  });

  it('still plans a new client after the corpus, and every service serves', async () => {
    stack.tap.publish(Subjects.clientProfile('np-after'), ClientProfile.encode(stackProfile(stack, 'np-after')).finish());
    await eventually(() => stack.planner.plans().some((p) => p.clientId === 'np-after'), { what: 'a plan after the corpus' });
    expect(await stack.serving()).toBe(true);
  });
});
