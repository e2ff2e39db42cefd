import {
  ALGORITHMS,
  evaluateGeneration,
  fastestGenerationPlacement,
  generationAsContractInstance,
  sloCheck,
  sloRatio,
  solveDp,
  solveGeneration,
  solveGenerationDp,
  solveGenerationDpBelow,
  solveGenerationGreedy,
  solveGenerationPrefix,
  type GenerationInstance,
  type Location,
  type SloKey,
} from './index';
import { expectDpNeverBeaten, optimumOf, randomGenerationInstance, seededRandom } from './random-instances.fixture';

const close = (a: number, b: number): boolean => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));

interface Best {
  feasible: boolean;
  serverWork: number;
  e2eMs: number;
  ratio: number;
  placement: Location[];
}

/** The optimum straight from the definition, by enumerating all 2^S placements (on a private instance, those keeping both ends on the client). */
function bruteForce(inst: GenerationInstance): Best {
  const S = inst.stages.length;
  const all: Best[] = [];
  for (let mask = 0; mask < 1 << S; mask++) {
    const placement = Array.from({ length: S }, (_, i): Location => (mask & (1 << i) ? 'server' : 'client'));
    if (inst.private && (placement[0] === 'server' || placement[S - 1] === 'server')) continue;
    const c = evaluateGeneration(inst, placement);
    all.push({ feasible: sloCheck(inst.slo, c).feasible, serverWork: c.serverWork, e2eMs: c.e2eMs, ratio: sloRatio(inst.slo, c), placement });
  }
  return optimumOf(all);
}

/** Greedy written independently from its one-sentence definition. */
function referenceGreedy(inst: GenerationInstance): Location[] {
  const S = inst.stages.length;
  const decided: Location[] = [];
  for (let i = 0; i < S; i++) {
    const tentative: Location[] = [...decided, 'client', ...Array<Location>(S - i - 1).fill('server')];
    decided.push(sloCheck(inst.slo, evaluateGeneration(inst, tentative)).feasible ? 'client' : 'server');
  }
  return decided;
}

const SUBSETS: SloKey[][] = [['e2eMs'], ['ttftMs'], ['tpotMs'], ['ttftMs', 'tpotMs'], ['e2eMs', 'ttftMs'], ['e2eMs', 'tpotMs'], ['e2eMs', 'ttftMs', 'tpotMs']];

/** Instances over every SLO subset, with and without server-side decoding and entry work, loose to infeasible; `whole` adds whole-model figures. */
function cases(seed: number, count: number, maxStages: number, whole = false): GenerationInstance[] {
  const rnd = seededRandom(seed);
  const out: GenerationInstance[] = [];
  for (let k = 0; k < count; k++) {
    out.push(
      randomGenerationInstance(rnd, 1 + Math.floor(rnd() * maxStages), {
        slos: SUBSETS[k % SUBSETS.length],
        serverDecoding: (k >> 3) % 2 === 0,
        entryWork: rnd() < 0.5 ? 0 : rnd() * 3,
        // Queue waits drawn from k, not from the generator, so the other draws stay as they were.
        queueMs: k % 3 === 0 ? 0 : (k % 7) * 0.75,
        // A decode pass's and a server-decoded step's waits apart from the prefill's on some.
        ...(k % 4 === 1 ? { decodeQueueMs: (k % 5) * 1.5 } : {}),
        ...(k % 6 === 2 ? { streamedQueueMs: (k % 9) * 0.5 } : {}),
        tightness: [-0.3, 0.1, 0.3, 0.5, 0.8, 1.1][Math.floor(rnd() * 6)],
        // From k too: a fused call (below 1) or dearer than stage by stage (above 1), prefill and decode apart.
        ...(whole ? { wholeModel: [[0.6, 0.9, 1.3][k % 3], [0.7, 1.0, 1.6, 0.5][k % 4]] as const } : {}),
      }),
    );
  }
  return out;
}

describe('dp on generation instances (exact)', () => {
  it('equals a brute force with whole-model figures for the streamed plan, cheaper or dearer than its stages, S <= 12', () => {
    // The stepped all-server plan is not a plan when the server decodes: it must not prune
    // the splits its figures dominate when the streamed plan, priced apart, does not.
    let streamed = 0,
      dearer = 0;
    for (const inst of cases(29, 500, 12, true)) {
      const want = bruteForce(inst);
      const got = solveGenerationDp(inst);
      const label = `${Object.keys(inst.slo).sort().join('+')} S=${inst.stages.length} decoding=${String(inst.serverDecoding)}`;
      expect({ label, feasible: got.feasible }).toEqual({ label, feasible: want.feasible });
      expect({ label, work: close(got.serverWork, want.serverWork) }).toEqual({ label, work: true });
      if (want.feasible) expect({ label, e2e: close(got.e2eMs, want.e2eMs) }).toEqual({ label, e2e: true });
      else expect({ label, ratio: close(sloRatio(inst.slo, got), want.ratio) }).toEqual({ label, ratio: true });
      if (got.serverDecoding) streamed++;
      const stepped = evaluateGeneration(
        { ...inst, serverDecoding: false },
        inst.stages.map((): Location => 'server'),
      );
      const whole = evaluateGeneration(
        inst,
        inst.stages.map((): Location => 'server'),
      );
      if (inst.serverDecoding !== false && whole.serverWork > stepped.serverWork) dearer++;
    }
    expect(streamed).toBeGreaterThan(10);
    expect(dearer).toBeGreaterThan(20);
  });

  it('keeps a split that ties the stepped all-server plan when the streamed one costs more (whole-model figures above the stages)', () => {
    // Stage 0 is free on both sides, so CS and stepped SS tie in every label figure; the
    // streamed SS does more work than either.
    const stage = (name: string, serverMs: number): GenerationInstance['stages'][number] => ({
      name,
      clientPrefillMs: 0,
      clientDecodeMs: 0,
      serverPrefillMs: serverMs,
      serverDecodeMs: serverMs,
      inBytesPerToken: 8,
    });
    const inst: GenerationInstance = {
      stages: [stage('free', 0), { ...stage('head', 1), clientPrefillMs: 1e6, clientDecodeMs: 1e6 }],
      promptTokens: 4,
      decodeSteps: 3,
      outBytesPerPass: 8,
      uplink: { latencyMs: 1, bytesPerMs: 1000 },
      downlink: { latencyMs: 1, bytesPerMs: 1000 },
      slo: { e2eMs: 100 },
      serverWholeModel: { serverPrefillMs: 1.3, serverDecodeMs: 1.3 },
    };
    const got = solveGenerationDp(inst);
    expect(got.placement).toEqual(['client', 'server']);
    expect(got.serverWork).toBeCloseTo(4, 12);
    expect(bruteForce(inst).serverWork).toBeCloseTo(4, 12);
    expect(evaluateGeneration(inst, ['server', 'server']).serverWork).toBeCloseTo(5.2, 12);
  });

  it('equals a brute force over all 2^S placements, S <= 12, every SLO subset', () => {
    const seen = { feasible: 0, infeasible: 0, streamed: 0, multiSwitch: 0, streamedOff: 0, entry: 0 };
    const bySubset = new Map<string, { feasible: number; infeasible: number }>();
    for (const inst of cases(17, 700, 12)) {
      const want = bruteForce(inst);
      const got = solveGenerationDp(inst);
      const label = `${Object.keys(inst.slo).sort().join('+')} S=${inst.stages.length}`;
      expect({ label, feasible: got.feasible }).toEqual({ label, feasible: want.feasible });
      expect({ label, work: close(got.serverWork, want.serverWork) }).toEqual({ label, work: true });
      if (want.feasible) expect({ label, e2e: close(got.e2eMs, want.e2eMs) }).toEqual({ label, e2e: true });
      else expect({ label, ratio: close(sloRatio(inst.slo, got), want.ratio) }).toEqual({ label, ratio: true });
      // Reported figures are exactly those of the returned placement.
      const e = evaluateGeneration(inst, got.placement);
      expect([got.ttftMs, got.tpotMs, got.e2eMs, got.latencyMs, got.serverWork]).toEqual([e.ttftMs, e.tpotMs, e.e2eMs, e.e2eMs, e.serverWork]);
      const key = Object.keys(inst.slo).sort().join('+');
      const row = bySubset.get(key) ?? { feasible: 0, infeasible: 0 };
      if (got.feasible) {
        seen.feasible++;
        row.feasible++;
      } else {
        seen.infeasible++;
        row.infeasible++;
      }
      bySubset.set(key, row);
      if (got.serverDecoding) seen.streamed++;
      if (got.switches > 2) seen.multiSwitch++;
      if (inst.serverDecoding === false && got.placement.every((p) => p === 'server')) seen.streamedOff++;
      if (inst.serverEntryWork) seen.entry++;
    }
    // The sample exercises every SLO subset both ways, the streamed plan, stepped all-server and switching twice.
    expect(bySubset.size).toBe(7);
    for (const row of bySubset.values()) {
      expect(row.feasible).toBeGreaterThan(10);
      expect(row.infeasible).toBeGreaterThan(3);
    }
    expect(seen.streamed).toBeGreaterThan(10);
    expect(seen.streamedOff).toBeGreaterThan(3);
    expect(seen.multiSwitch).toBeGreaterThan(10);
    expect(seen.entry).toBeGreaterThan(100);
  });

  it('below a work bound: the unbounded answer when it is feasible and within the bound, otherwise none (bounds at, just under and around the optimum)', () => {
    const seen = { found: 0, none: 0, infeasible: 0 };
    for (const inst of cases(23, 500, 12, true)) {
      const full = solveGenerationDp(inst);
      for (const bound of full.feasible ? [full.serverWork, full.serverWork * (1 - 1e-6), full.serverWork * 1.3, full.serverWork * 0.7] : [Infinity, 1e9]) {
        const got = solveGenerationDpBelow(inst, bound);
        if (full.feasible && full.serverWork <= bound) {
          seen.found++;
          // The same placement, figures and all.
          expect(got).toEqual(full);
        } else {
          if (full.feasible) seen.none++;
          else seen.infeasible++;
          expect(got).toBeUndefined();
        }
      }
    }
    expect(seen.found).toBeGreaterThan(300);
    expect(seen.none).toBeGreaterThan(300);
    expect(seen.infeasible).toBeGreaterThan(50);
  });

  it('with only an E2E SLO and no server-side decoding answers what the contract dp answers on the mapped instance', () => {
    for (const base of cases(29, 140, 12)) {
      const inst: GenerationInstance = { ...base, slo: { e2eMs: base.slo.e2eMs ?? base.slo.ttftMs ?? base.slo.tpotMs! * 10 }, serverDecoding: false };
      const gen = solveGenerationDp(inst);
      const contract = solveDp(generationAsContractInstance(inst));
      expect(gen.feasible).toBe(contract.feasible);
      expect(close(gen.serverWork, contract.serverWork)).toBe(true);
      expect(close(gen.e2eMs, contract.latencyMs)).toBe(true);
    }
  });

  it('prefers the streamed all-server plan over a split that does no less work', () => {
    // Two stages; the client is slow, so every split costs the server as much or misses the SLO.
    const inst: GenerationInstance = {
      stages: [
        { name: 'embed', clientPrefillMs: 5, serverPrefillMs: 1, clientDecodeMs: 1, serverDecodeMs: 0.2, inBytesPerToken: 8 },
        { name: 'head', clientPrefillMs: 500, serverPrefillMs: 10, clientDecodeMs: 100, serverDecodeMs: 2, inBytesPerToken: 3072 },
      ],
      promptTokens: 16,
      decodeSteps: 15,
      outBytesPerPass: 8,
      uplink: { latencyMs: 20, bytesPerMs: 1000 },
      downlink: { latencyMs: 20, bytesPerMs: 10_000 },
      slo: { ttftMs: 200, tpotMs: 10 },
      serverEntryWork: 0.5,
    };
    const streamed = solveGenerationDp(inst);
    expect(streamed.placement).toEqual(['server', 'server']);
    expect(streamed.serverDecoding).toBe(true);
    expect(streamed.tpotMs).toBeCloseTo(2.2, 12);
    expect(streamed.feasible).toBe(true);
    // Priced stepped, every decode pass pays 2 × 20 ms of links: TPOT 10 ms is out of reach.
    const stepped = solveGenerationDp({ ...inst, serverDecoding: false });
    expect(stepped.feasible).toBe(false);
    expect(stepped.tpotMs).toBeGreaterThan(40);
  });

  it('meets TTFT and TPOT together where the E2E-only optimum violates TPOT', () => {
    // Moving the head to the client saves server work and fits an E2E budget, but its decode pass is slow.
    const inst: GenerationInstance = {
      stages: [
        { name: 'embed', clientPrefillMs: 1, serverPrefillMs: 0.5, clientDecodeMs: 0.1, serverDecodeMs: 0.05, inBytesPerToken: 8 },
        { name: 'block', clientPrefillMs: 30, serverPrefillMs: 3, clientDecodeMs: 3, serverDecodeMs: 0.3, inBytesPerToken: 1024 },
        { name: 'head', clientPrefillMs: 2, serverPrefillMs: 1, clientDecodeMs: 12, serverDecodeMs: 1, inBytesPerToken: 1024 },
      ],
      promptTokens: 8,
      decodeSteps: 9,
      outBytesPerPass: 8,
      uplink: { latencyMs: 1, bytesPerMs: 10_000 },
      downlink: { latencyMs: 1, bytesPerMs: 10_000 },
      slo: { e2eMs: 400 },
    };
    const e2eOnly = solveGenerationDp(inst);
    expect(e2eOnly.feasible).toBe(true);
    expect(e2eOnly.tpotMs).toBeGreaterThan(10);
    const both = solveGenerationDp({ ...inst, slo: { e2eMs: 400, ttftMs: 60, tpotMs: 10 } });
    expect(both.feasible).toBe(true);
    expect(both.met).toEqual({ ttftMs: true, tpotMs: true, e2eMs: true });
    expect(both.tpotMs).toBeLessThanOrEqual(10);
    expect(both.placement).not.toEqual(e2eOnly.placement);
    expect(both.serverWork).toBeGreaterThan(e2eOnly.serverWork);
  });

  it('fastestGenerationPlacement minimises the largest ratio to the SLOs', () => {
    for (const inst of cases(41, 120, 9)) {
      const got = fastestGenerationPlacement(inst);
      const want = bruteForce({ ...inst, slo: Object.fromEntries(Object.entries(inst.slo).map(([k, v]) => [k, v * 1e-6])) });
      expect(close(sloRatio(inst.slo, got), want.ratio * 1e-6)).toBe(true);
    }
  });
});

describe('private instances (token ids and text stay on the device)', () => {
  const privates = cases(41, 210, 9).map((inst) => ({ ...inst, private: true }));

  it('dp equals a brute force over the placements that keep the first and last stage on the client', () => {
    for (const inst of privates) {
      const got = solveGenerationDp(inst);
      const want = bruteForce(inst);
      expect(got.feasible).toBe(want.feasible);
      expect(close(got.serverWork, want.serverWork)).toBe(true);
      if (!want.feasible) expect(close(sloRatio(inst.slo, got), want.ratio)).toBe(true);
    }
  });

  it('every algorithm keeps both ends on the client and never calls the all-server plan streamed', () => {
    for (const inst of privates) {
      const S = inst.stages.length;
      for (const algorithm of ALGORITHMS) {
        if (algorithm === 'dp-grid' && (inst.slo.ttftMs !== undefined || inst.slo.tpotMs !== undefined || inst.slo.e2eMs === undefined)) continue;
        const r = solveGeneration({ ...inst, resolutionMs: (inst.slo.e2eMs ?? 1) / 200 }, algorithm);
        expect([algorithm, r.placement[0], r.placement[S - 1]]).toEqual([algorithm, 'client', 'client']);
        expect(r.serverDecoding).toBe(false);
      }
    }
  });

  it('says infeasible where only the all-server plan met the SLOs', () => {
    let turned = 0;
    for (const inst of cases(43, 200, 6)) {
      const open = solveGenerationDp(inst);
      const priv = solveGenerationDp({ ...inst, private: true });
      if (open.feasible && !priv.feasible) turned++;
      // Privacy only removes plans: never less work, never feasible where the open instance is not.
      if (priv.feasible) expect(open.feasible && open.serverWork <= priv.serverWork * (1 + 1e-9)).toBe(true);
    }
    expect(turned).toBeGreaterThan(0);
  });
});

describe('every algorithm on generation instances', () => {
  const instances = cases(53, 210, 14);

  it('reports exactly the figures of its own placement, and feasible iff every stated SLO is met', () => {
    for (const inst of instances) {
      for (const algorithm of ALGORITHMS) {
        if (algorithm === 'dp-grid') continue;
        const r = solveGeneration(inst, algorithm);
        expect(r.algorithm).toBe(algorithm);
        const e = evaluateGeneration(inst, r.placement);
        expect([r.ttftMs, r.tpotMs, r.e2eMs, r.latencyMs, r.serverWork, r.switches]).toEqual([e.ttftMs, e.tpotMs, e.e2eMs, e.e2eMs, e.serverWork, e.switches]);
        const check = sloCheck(inst.slo, e);
        expect(r.feasible).toBe(check.feasible);
        expect(r.met).toEqual(check.met);
      }
    }
  });

  it('never beats dp: feasible answers of the others do at least as much work', () => {
    expectDpNeverBeaten(instances, solveGenerationDp, ['greedy', 'prefix', 'server-only', 'client-only'] as const, solveGeneration);
  });

  it('greedy follows its rule decision by decision; prefix is the best single split', () => {
    for (const inst of instances) {
      expect(solveGenerationGreedy(inst).placement).toEqual(referenceGreedy(inst));
      const r = solveGenerationPrefix(inst);
      const k = r.placement.indexOf('server');
      const split = k < 0 ? r.placement.length : k;
      expect(r.placement.slice(split).every((p) => p === 'server')).toBe(true);
      for (let j = 0; j <= inst.stages.length; j++) {
        const c = evaluateGeneration(
          inst,
          inst.stages.map((_, i): Location => (i < j ? 'client' : 'server')),
        );
        const ok = sloCheck(inst.slo, c).feasible;
        if (r.feasible && ok) expect(c.serverWork).toBeGreaterThanOrEqual(r.serverWork * (1 - 1e-9));
        if (!r.feasible) expect(ok).toBe(false);
        if (!r.feasible) expect(sloRatio(inst.slo, c)).toBeGreaterThanOrEqual(sloRatio(inst.slo, r) * (1 - 1e-9));
      }
    }
  });

  it('dp-grid answers E2E-only instances, never below dp, and refuses TTFT/TPOT SLOs naming slo', () => {
    let compared = 0;
    for (const inst of instances) {
      const withRes = { ...inst, resolutionMs: Math.max((inst.slo.e2eMs ?? 1) / 300, 1e-3) };
      if (inst.slo.ttftMs !== undefined || inst.slo.tpotMs !== undefined) {
        expect(() => solveGeneration(withRes, 'dp-grid')).toThrow(/^slo must state e2eMs alone for dp-grid/);
        continue;
      }
      const grid = solveGeneration(withRes, 'dp-grid');
      const dp = solveGenerationDp(inst);
      if (grid.feasible) {
        expect(dp.feasible).toBe(true);
        expect(grid.serverWork).toBeGreaterThanOrEqual(dp.serverWork * (1 - 1e-9));
        compared++;
      }
    }
    expect(compared).toBeGreaterThan(5);
  });
});
