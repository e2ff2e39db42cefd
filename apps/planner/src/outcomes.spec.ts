import { OutcomeStatus, Subjects, type GenerationOutcome } from '@tandem/protocol';
import { generationOutcome } from '@tandem/testkit';
import { MAX_OUTCOME_MS, validateOutcome } from './outcomes';

const CTX = { stageCount: 3, classes: new Set(['short', 'long']), subject: Subjects.outcome('dev-1') };

function outcome(over: Partial<GenerationOutcome> = {}): GenerationOutcome {
  return generationOutcome({
    clientId: 'dev-1',
    clientClass: 'phone',
    placement: 'CCS',
    planEpoch: 7,
    promptTokens: 10,
    newTokens: 4,
    predictedE2eMs: 60,
    predictedTtftMs: 0,
    predictedTpotMs: 0,
    ttftMs: 30,
    tpotMs: 10,
    e2eMs: 60,
    serverComputeMs: 2,
    serverQueueMs: 1,
    slaMs: 100,
    unixMs: 1_700_000_000_000,
    ...over,
  });
}

describe('validateOutcome', () => {
  it('takes a well-formed outcome: good when every stated SLO was met', () => {
    const v = validateOutcome(outcome(), CTX);
    expect(v).toMatchObject({ clientId: 'dev-1', requestClass: 'short', placement: 'CCS', planEpoch: 7, ok: true, good: true });
    expect(v.predicted).toEqual({ e2e: 60, ttft: 0, tpot: 0 });
    expect(v.measured).toEqual({ e2e: 60, ttft: 30, tpot: 10 });
  });

  it("names a phased plan's outcome by both placements, and a decode placement equal to the prefill's by the one", () => {
    expect(validateOutcome(outcome({ placement: 'SSS', decodePlacement: 'CCC' }), CTX).placement).toBe('SSS/CCC');
    expect(validateOutcome(outcome({ placement: 'CCS', decodePlacement: 'CCS' }), CTX).placement).toBe('CCS');
    expect(validateOutcome(outcome({ placement: 'CCS', decodePlacement: '' }), CTX).placement).toBe('CCS');
  });

  it('counts a missed SLO, and a failed generation, as not good', () => {
    expect(validateOutcome(outcome({ e2eMs: 150, slaMet: false }), CTX).good).toBe(false);
    expect(validateOutcome(outcome({ ttftSloMs: 20, ttftMet: false }), CTX).good).toBe(false);
    const failed = validateOutcome(outcome({ status: OutcomeStatus.OUTCOME_STATUS_FAILED, newTokens: 0, ttftMs: 0, tpotMs: 0, e2eMs: 5, slaMet: false }), CTX);
    expect(failed).toMatchObject({ ok: false, good: false });
    // with no SLO stated a failure is still a miss
    expect(validateOutcome(outcome({ status: OutcomeStatus.OUTCOME_STATUS_FAILED, slaMs: 0 }), CTX).good).toBe(false);
  });

  it.each<[string, Partial<GenerationOutcome>, string]>([
    ['a bad client id', { clientId: 'a.b' }, "clientId must match /^[A-Za-z0-9_-]{1,64}$/, given 'a.b'"],
    ['a bad executor id', { executorId: 'exec a' }, "executorId must be empty or match /^[A-Za-z0-9_-]{1,64}$/, given 'exec a'"],
    ['an unknown request class', { requestClass: 'huge' }, "requestClass must be one of short, long, given 'huge'"],
    ['a placement of the wrong length', { placement: 'CS' }, "placement must be 3 letters C or S, given 'CS'"],
    ['a placement with other letters', { placement: 'CXS' }, "placement must be 3 letters C or S, given 'CXS'"],
    ['a long placement, cut short in the message', { placement: 'C'.repeat(5000) }, `placement must be 3 letters C or S, given '${'C'.repeat(44)}...`],
    ['a decode placement of the wrong length', { decodePlacement: 'CCCC' }, "decodePlacement must be empty or 3 letters C or S, given 'CCCC'"],
    ['a decode placement with other letters', { decodePlacement: 'CxS' }, "decodePlacement must be empty or 3 letters C or S, given 'CxS'"],
    ['epoch 0 (no plan)', { planEpoch: 0 }, 'planEpoch must be an integer >= 1 (outcomes come from planned generations), given 0'],
    ['an unset status', { status: OutcomeStatus.OUTCOME_STATUS_UNSPECIFIED }, 'status must be OUTCOME_STATUS_OK or OUTCOME_STATUS_FAILED, given 0'],
    ['an unknown status', { status: 9 as OutcomeStatus }, 'status must be OUTCOME_STATUS_OK or OUTCOME_STATUS_FAILED, given 9'],
    ['NaN latency', { e2eMs: Number.NaN }, `e2eMs must be a finite number in 0..${MAX_OUTCOME_MS} ms, given NaN`],
    ['infinite prediction', { predictedE2eMs: Number.POSITIVE_INFINITY }, `predictedE2eMs must be a finite number in 0..${MAX_OUTCOME_MS} ms, given Infinity`],
    ['a huge but finite latency', { ttftMs: 1e300 }, `ttftMs must be a finite number in 0..${MAX_OUTCOME_MS} ms, given 1e+300`],
    ['a negative queue time', { serverQueueMs: -1 }, `serverQueueMs must be a finite number in 0..${MAX_OUTCOME_MS} ms, given -1`],
    ['a huge SLA', { slaMs: 1e12 }, `slaMs must be a finite number in 0..${MAX_OUTCOME_MS} ms, given 1000000000000`],
    ['a huge token count', { newTokens: 4_000_000_000 }, 'newTokens must be at most 1048576, given 4000000000'],
    ['no prompt', { promptTokens: 0 }, 'promptTokens must be >= 1, given 0'],
    ['success with no token', { newTokens: 0 }, 'newTokens must be >= 1 for status OUTCOME_STATUS_OK, given 0'],
    ['success in no time', { e2eMs: 0, ttftMs: 0, tpotMs: 0 }, 'e2eMs must be > 0 for status OUTCOME_STATUS_OK, given 0'],
    ['a met flag the figures contradict', { e2eMs: 150 }, 'slaMet must be false for slaMs 100 and status OK with the measured 150 ms, given true'],
    [
      'a failure claiming its SLA met',
      { status: OutcomeStatus.OUTCOME_STATUS_FAILED },
      'slaMet must be false for slaMs 100 and status FAILED with the measured 60 ms, given true',
    ],
    ['a miss of an SLO not stated', { tpotMet: false }, 'tpotMet must be true for tpotSloMs 0 and status OK with the measured 10 ms, given false'],
    ['a negative timestamp', { unixMs: -5 }, 'unixMs must be an integer >= 0, given -5'],
  ])('refuses %s, naming the field, the rule and the value', (_what, over, message) => {
    expect(() => validateOutcome(outcome(over), CTX)).toThrow(message);
  });

  it("refuses an outcome published on another client's subject", () => {
    expect(() => validateOutcome(outcome({ clientId: 'dev-2' }), CTX)).toThrow(
      "clientId must match the subject 'tandem.telemetry.v1.outcome.dev-1', given 'dev-2'",
    );
    expect(validateOutcome(outcome({ clientId: 'dev-2' }), { ...CTX, subject: undefined }).clientId).toBe('dev-2');
  });
});
