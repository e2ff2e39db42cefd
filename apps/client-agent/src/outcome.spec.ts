import { OutcomeStatus, type ClassPlacement } from '@tandem/protocol';
import { classPlacement, MET_E2E_SLA } from '@tandem/testkit';
import { buildOutcome, predictedOf, type MeasuredGeneration } from './outcome';

const WHO = { clientId: 'dev-1', clientClass: 'phone', modelId: 'm' };
const CLS = classPlacement();
const RUN: MeasuredGeneration = { ok: true, promptTokens: 5, newTokens: 6, ttftMs: 30, e2eMs: 80, serverComputeMs: 4, serverQueueMs: 1.5 };

describe('buildOutcome', () => {
  it('reports the plan, the prediction, the measured figures and TPOT over the tokens after the first', () => {
    const o = buildOutcome(WHO, CLS, 42, 'CSS', RUN, 1234);
    expect(o).toMatchObject({
      clientId: 'dev-1',
      clientClass: 'phone',
      modelId: 'm',
      requestClass: 'short',
      placement: 'CSS',
      planEpoch: 42,
      promptTokens: 5,
      newTokens: 6,
      predictedE2eMs: 80,
      predictedTtftMs: 0,
      predictedTpotMs: 0,
      ttftMs: 30,
      e2eMs: 80,
      serverComputeMs: 4,
      serverQueueMs: 1.5,
      slaMs: 100,
      ...MET_E2E_SLA,
      unixMs: 1234,
    });
    expect(o.tpotMs).toBeCloseTo((80 - 30) / 5, 12);
  });

  it('says the SLA was missed when the generation took longer, and reports a single token with no TPOT', () => {
    expect(buildOutcome(WHO, CLS, 1, 'CSS', { ...RUN, e2eMs: 100.5 }, 0).slaMet).toBe(false);
    expect(buildOutcome(WHO, CLS, 1, 'CSS', { ...RUN, newTokens: 1, e2eMs: 30 }, 0).tpotMs).toBe(0);
  });

  it('reports a failed generation as missing every stated SLO, but not one that is not stated', () => {
    const o = buildOutcome(WHO, CLS, 1, 'CSS', { ...RUN, ok: false, newTokens: 0, ttftMs: 0, e2eMs: 5 }, 0);
    expect(o).toMatchObject({ status: OutcomeStatus.OUTCOME_STATUS_FAILED, slaMet: false, ttftMet: true, tpotMet: true, newTokens: 0 });
  });

  it('takes TTFT/TPOT predictions and SLOs from the plan when it carries them', () => {
    const withTerms = { ...CLS, predictedTtftMs: 25, predictedTpotMs: 9, ttftMs: 20, tpotMs: 12 } as ClassPlacement;
    const o = buildOutcome(WHO, withTerms, 1, 'CSS', RUN, 0);
    expect(o).toMatchObject({ predictedTtftMs: 25, predictedTpotMs: 9, ttftSloMs: 20, tpotSloMs: 12, ttftMet: false, tpotMet: true });
  });

  it('predicts a request by its own prompt and output length from the class figures and the TTFT slope', () => {
    const cls = { ...CLS, maxPromptTokens: 32, predictedTtftMs: 40, predictedTpotMs: 10, predictedTtftMsPerPromptToken: 0.5, predictedLatencyMs: 110 };
    expect(predictedOf(cls, 12, 4)).toEqual({ predictedTtftMs: 30, predictedTpotMs: 10, predictedLatencyMs: 60 });
    expect(predictedOf(cls, 32, 8)).toEqual({ predictedTtftMs: 40, predictedTpotMs: 10, predictedLatencyMs: 110 });
    expect(predictedOf(undefined, 12, 4)).toEqual({ predictedTtftMs: 0, predictedTpotMs: 0, predictedLatencyMs: 0 });
    // the outcome carries the request's prediction
    expect(buildOutcome(WHO, cls, 1, 'CSS', { ...RUN, promptTokens: 12, newTokens: 4 }, 0)).toMatchObject({ predictedTtftMs: 30, predictedE2eMs: 60 });
  });

  it("predicts a phased request's hand-over by its own prompt length, spread over its own decode passes", () => {
    // Priced at 32 prompt tokens and 9 new: TPOT 10 = a 6 ms pass + a 32 ms hand-over over 8 passes; 1 ms per prompt token moved.
    const cls = {
      ...CLS,
      maxPromptTokens: 32,
      expectedNewTokens: 9,
      predictedTtftMs: 40,
      predictedTpotMs: 10,
      predictedTtftMsPerPromptToken: 0.5,
      predictedLatencyMs: 120,
      decodePlacement: 'SSS',
      predictedHandoverMs: 32,
      predictedHandoverMsPerPromptToken: 1,
    };
    // The class's own request: the plan's figures.
    expect(predictedOf(cls, 32, 9)).toEqual({ predictedTtftMs: 40, predictedTpotMs: 10, predictedLatencyMs: 120 });
    // 12 prompt tokens (TTFT 30, hand-over 12 ms) and 5 new: 30 + 4 × 6 + 12 = 66, TPOT (66 - 30) / 4 = 9.
    expect(predictedOf(cls, 12, 5)).toEqual({ predictedTtftMs: 30, predictedTpotMs: 9, predictedLatencyMs: 66 });
    // Without a slope the hand-over is the class's whole one: 30 + 4 × 6 + 32.
    expect(predictedOf({ ...cls, predictedHandoverMsPerPromptToken: undefined }, 12, 5).predictedLatencyMs).toBe(86);
  });

  it("moves a decode pass by the plan's slope per prompt token: a shorter prompt's steps attend to fewer positions", () => {
    // Priced at 32 prompt tokens: a 10 ms pass, 0.1 ms less per prompt token below that.
    const cls = {
      ...CLS,
      maxPromptTokens: 32,
      predictedTtftMs: 40,
      predictedTpotMs: 10,
      predictedTtftMsPerPromptToken: 0.5,
      predictedTpotMsPerPromptToken: 0.1,
    };
    // 12 prompt tokens: TTFT 30, pass 10 - 20 × 0.1 = 8, E2E 30 + 3 × 8.
    expect(predictedOf(cls, 12, 4)).toEqual({ predictedTtftMs: 30, predictedTpotMs: 8, predictedLatencyMs: 54 });
    expect(predictedOf(cls, 32, 4)).toEqual({ predictedTtftMs: 40, predictedTpotMs: 10, predictedLatencyMs: 70 });
    // A phased plan's pass moves the same way beside its hand-over: 30 + 4 × (6 - 2) + 12 = 58.
    const phased = { ...cls, expectedNewTokens: 9, decodePlacement: 'SSS', predictedHandoverMs: 32, predictedHandoverMsPerPromptToken: 1 };
    expect(predictedOf(phased, 12, 5)).toEqual({ predictedTtftMs: 30, predictedTpotMs: 7, predictedLatencyMs: 58 });
  });

  it("carries a phased plan's decode placement only when it differs from the placement", () => {
    expect(buildOutcome(WHO, CLS, 1, 'CSS', RUN, 0, undefined, 'CCC').decodePlacement).toBe('CCC');
    expect(buildOutcome(WHO, CLS, 1, 'CSS', RUN, 0, undefined, 'CSS')).not.toHaveProperty('decodePlacement');
    expect(buildOutcome(WHO, CLS, 1, 'CSS', RUN, 0)).not.toHaveProperty('decodePlacement');
  });
});
