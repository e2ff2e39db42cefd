import {
  InstanceValidationError,
  evaluateGeneration,
  evaluatePhased,
  isPhasedInstance,
  sloCheck,
  sloRatio,
  solveGenerationDp,
  handoverWork,
  phaseEntryWork,
  solvePhasedAndSingle,
  solvePhasedDp,
  validatePhasedInstance,
  type GenerationInstance,
  type HandoverInstance,
  type Location,
  type SloKey,
} from './index';
import { docJsonBlock } from '@tandem/testkit';
import { optimumOf, randomGenerationInstance, seededRandom, type Enumerated } from './random-instances.fixture';

const close = (a: number, b: number): boolean => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));

type Best = Enumerated;

const sides = (S: number, mask: number): Location[] => Array.from({ length: S }, (_, i): Location => (mask & (1 << i) ? 'server' : 'client'));

/** The optimum straight from the definition: every one of the 4^S (prefill, decode) pairs. */
function bruteForce(inst: HandoverInstance): Best {
  const S = inst.stages.length;
  const all: Best[] = [];
  // On a private instance both ends stay on the client in both phases (bits 0 and S-1 clear).
  const ends = inst.private ? 1 | (1 << (S - 1)) : 0;
  for (let pm = 0; pm < 1 << S; pm++) {
    for (let dm = 0; dm < 1 << S; dm++) {
      if (pm & ends || dm & ends) continue;
      const c = evaluatePhased(inst, sides(S, pm), sides(S, dm));
      all.push({ feasible: sloCheck(inst.slo, c).feasible, serverWork: c.serverWork, e2eMs: c.e2eMs, ratio: sloRatio(inst.slo, c) });
    }
  }
  return optimumOf(all);
}

const SUBSETS: SloKey[][] = [['e2eMs'], ['ttftMs'], ['tpotMs'], ['ttftMs', 'tpotMs'], ['e2eMs', 'ttftMs'], ['e2eMs', 'tpotMs'], ['e2eMs', 'ttftMs', 'tpotMs']];

/**
 * Random instances; two in three price the server's hand-over work (messages, KiB in and out,
 * chunks of a few positions or one message per stage), on the scale of the stages' work.
 */
function cases(seed: number, count: number, maxStages: number): HandoverInstance[] {
  const rnd = seededRandom(seed);
  return Array.from({ length: count }, (_, k) => {
    const inst = randomGenerationInstance(rnd, 1 + Math.floor(rnd() * maxStages), {
      slos: SUBSETS[k % SUBSETS.length],
      serverDecoding: (k >> 3) % 2 === 0,
      entryWork: k % 5 === 0 ? 0 : rnd() * 3,
      queueMs: k % 3 === 0 ? 0 : (k % 7) * 0.75,
      ...(k % 4 === 1 ? { decodeQueueMs: (k % 5) * 1.5 } : {}),
      ...(k % 6 === 2 ? { streamedQueueMs: (k % 9) * 0.5 } : {}),
      tightness: [-0.3, 0.1, 0.3, 0.5, 0.8, 1.1][k % 6],
      ...(k % 4 === 1 ? { wholeModel: [[0.6, 0.9, 1.3][k % 3], [0.7, 1.0, 1.6, 0.5][k % 4]] as const } : {}),
      kv: true,
    });
    // One in four also prices the prefill's entries apart (up to (m + 1) times the mean entry).
    const entries = k % 4 === 2 ? { serverPrefillEntryWork: rnd() * (inst.decodeSteps + 1) * (inst.serverEntryWork ?? 0) } : {};
    if (k % 3 === 0) return { ...inst, ...entries };
    return {
      ...inst,
      ...entries,
      kvHandover: {
        msPerMessageIn: rnd() * 2,
        msPerMessageOut: rnd() * 2,
        msPerKibIn: rnd() * 0.05,
        msPerKibOut: rnd() * 0.05,
        ...(k % 3 === 1 ? { chunkBytes: [4096, 65_536, 1 << 20][(k >> 1) % 3] } : {}),
      },
    };
  });
}

/**
 * The worked example of docs/placement.md ("Prefill and decode placed apart"): a prompt too
 * slow to prefill on the device, a decode the device can afford, a link too slow to cross
 * twice per token.
 */
const { phased: _phased, ...WORKED } = docJsonBlock('docs/placement.md', 'phased-example:instance') as GenerationInstance & { phased: true };

describe('evaluatePhased', () => {
  it('equals evaluateGeneration when both phases use the same placement, or when there is no decode pass', () => {
    for (const inst of cases(11, 120, 6)) {
      const S = inst.stages.length;
      for (let mask = 0; mask < 1 << S; mask++) {
        const p = sides(S, mask);
        const g = evaluateGeneration(inst, p);
        const c = evaluatePhased(inst, p, p);
        expect([c.ttftMs, c.tpotMs, c.e2eMs, c.serverWork, c.handoverMs]).toEqual([g.ttftMs, g.tpotMs, g.e2eMs, g.serverWork, 0]);
        const noDecode = { ...inst, decodeSteps: 0 };
        expect(evaluatePhased(noDecode, p, sides(S, ~mask)).e2eMs).toBe(evaluateGeneration(noDecode, p).e2eMs);
      }
    }
  });

  it('prices the worked example by hand: server prefill of the block, device decode, the KV cache moved down once', () => {
    const c = evaluatePhased(WORKED, ['client', 'server', 'client'], ['client', 'client', 'client']);
    // embed 2 + up 20 + 102400/1000 + block 20 + down 20 + 102400/5000 + head 4
    expect(c.ttftMs).toBeCloseTo(188.88, 9);
    // 2048 B/token × 100 tokens down: 20 + 204800/5000 = 60.96 ms, over 20 passes of 1 + 10 + 4 ms
    expect(c.kvDownBytes).toBe(204_800);
    expect(c.kvUpBytes).toBe(0);
    expect(c.handoverMs).toBeCloseTo(60.96, 9);
    expect(c.tpotMs).toBeCloseTo(15 + 60.96 / 20, 9);
    expect(c.e2eMs).toBeCloseTo(188.88 + 20 * 18.048, 9);
    expect(c.serverWork).toBe(20);
  });

  it("adds the server's decode queue wait once per direction a hand-over uses, not once per stage moved", () => {
    const queued = { ...WORKED, serverDecodeQueueMs: 3 };
    const down = evaluatePhased(queued, ['client', 'server', 'client'], ['client', 'client', 'client']);
    // 20 + 204800/5000 + one wait of 3 ms (the take's engine calls are made together).
    expect(down.handoverMs).toBeCloseTo(60.96 + 3, 9);
    expect(down.tpotMs).toBeCloseTo(15 + (60.96 + 3) / 20, 9);
    const upAll = (inst: HandoverInstance): number => evaluatePhased(inst, ['client', 'client', 'client'], ['server', 'server', 'server']).handoverMs;
    expect(upAll(queued)).toBeCloseTo(upAll(WORKED) + 3, 9);
    // Nothing moved, nothing waited.
    expect(evaluatePhased(queued, ['client', 'server', 'client'], ['client', 'server', 'client']).handoverMs).toBe(0);
  });

  it("prices the server's hand-over work by hand: the block's cache sent down in chunks, or taken in", () => {
    const kvHandover = { msPerMessageIn: 0.5, msPerMessageOut: 0.25, msPerKibIn: 0.01, msPerKibOut: 0.004, chunkBytes: 65_536 };
    const inst = { ...WORKED, kvHandover };
    const down = evaluatePhased(inst, ['client', 'server', 'client'], ['client', 'client', 'client']);
    // 204800 B = 200 KiB in chunks of 32 positions (65536 / 2048): 4 kv_chunks out, one kv_take in.
    // 0.5 + 4 · 0.25 + 200 · 0.004 = 2.3, beside the block's prefill work of 20.
    expect(down.handoverWork).toBeCloseTo(2.3, 9);
    expect(down.serverWork).toBeCloseTo(22.3, 9);
    // The decode waits for that work too: the link's 60.96 ms + 2.3 ms, spread over the 20 passes.
    expect(down.handoverMs).toBeCloseTo(60.96 + 2.3, 9);
    expect(down.tpotMs).toBeCloseTo(15 + (60.96 + 2.3) / 20, 9);
    const up = evaluatePhased(inst, ['client', 'client', 'client'], ['server', 'server', 'server']);
    // 4 kv_put chunks in and 200 KiB in: 4 · 0.5 + 200 · 0.01 = 4.
    expect(up.handoverWork).toBeCloseTo(4, 9);
    expect(up.handoverMs).toBeCloseTo(evaluatePhased(WORKED, ['client', 'client', 'client'], ['server', 'server', 'server']).handoverMs + 4, 9);
    expect(up.serverWork).toBeCloseTo(evaluatePhased(WORKED, ['client', 'client', 'client'], ['server', 'server', 'server']).serverWork + 4, 9);
    // Without a chunk size each stage's cache is one message.
    expect(handoverWork({ ...kvHandover, chunkBytes: 0 }, 2048, 100, true)).toBeCloseTo(0.5 + 2, 9);
    expect(handoverWork(kvHandover, 0, 100, true)).toBe(0);
    // A move-free pair and a single placement cost nothing more.
    expect(evaluatePhased(inst, ['server', 'server', 'server'], ['client', 'server', 'server']).handoverWork).toBe(0);
    expect(evaluatePhased(inst, ['client', 'server', 'client'], ['client', 'server', 'client']).handoverWork).toBe(0);
  });

  it("prices the prefill's entries apart from the decode's by hand, and a pair whose phases agree as the generation does", () => {
    // Mean entry 2 over the 21 passes (42 per stage entered each pass); the prefill's entry 10,
    // so a decode entry is (42 - 10) / 20 = 1.6.
    const inst = { ...WORKED, serverEntryWork: 2, serverPrefillEntryWork: 10 };
    expect(phaseEntryWork(inst)).toEqual({ prefill: 10, decode: 1.6 });
    const down = evaluatePhased(inst, ['client', 'server', 'client'], ['client', 'client', 'client']);
    // The block's prefill 20, its entry 10, the hand-over down one decode entry 1.6.
    expect(down.serverWork).toBeCloseTo(31.6, 9);
    // Priced at the mean, the same pair was 20 + 2 + 2.
    expect(evaluatePhased({ ...WORKED, serverEntryWork: 2 }, ['client', 'server', 'client'], ['client', 'client', 'client']).serverWork).toBeCloseTo(24, 9);
    // A stepped decode of the block: 20 + 10 in the prefill, 20 x (2 + 1.6) after, nothing handed over but the token.
    const stepped = evaluatePhased({ ...inst, serverDecoding: false }, ['client', 'server', 'client'], ['client', 'server', 'client']);
    const split = evaluateGeneration({ ...inst, serverDecoding: false }, ['client', 'server', 'client']);
    // Phases that agree: the generation's figures, 20 + 20 x 2 + 21 x 2 = 102, the same as 30 + 20 x 3.6.
    expect(stepped.serverWork).toBe(split.serverWork);
    expect(split.serverWork).toBeCloseTo(102, 9);
    expect(30 + 20 * 3.6).toBeCloseTo(split.serverWork, 9);
    // dp-phased picks the same pair at its new price.
    const r = solvePhasedDp(inst);
    expect([r.prefillPlacement, r.decodePlacement]).toEqual([
      ['client', 'server', 'client'],
      ['client', 'client', 'client'],
    ]);
    expect(r.serverWork).toBeCloseTo(31.6, 9);
    // Without decode passes, or unset, every entry is the mean; a figure above the bound is taken as it.
    expect(phaseEntryWork({ ...inst, decodeSteps: 0 })).toEqual({ prefill: 2, decode: 2 });
    expect(phaseEntryWork({ ...WORKED, serverEntryWork: 2 })).toEqual({ prefill: 2, decode: 2 });
    expect(phaseEntryWork({ ...inst, serverPrefillEntryWork: 50 })).toEqual({ prefill: 42, decode: 0 });
  });

  it('moves nothing for a stage without a KV cache; the loop of the server starts with one crossing each way, whatever ran the prefill', () => {
    const free = evaluatePhased(WORKED, ['server', 'server', 'server'], ['client', 'server', 'server']);
    expect([free.kvUpBytes, free.kvDownBytes, free.handoverMs]).toEqual([0, 0, 0]);
    const up = evaluatePhased(WORKED, ['client', 'client', 'client'], ['server', 'server', 'server']);
    expect(up.kvUpBytes).toBe(204_800);
    // One upward transfer, the block's cache and the 8-byte token (20 + 204808/1000 ms), then the
    // loop's first token down (20 + 8/5000 ms).
    expect(up.handoverMs).toBeCloseTo(20 + 204.808 + 20.0016, 9);
    expect(up.serverDecoding).toBe(true);
    expect(up.tpotMs).toBeCloseTo(3.5 + up.handoverMs / 20, 9);
    // A prefill ending on the server that moves no cache (the embedding alone on the client): the
    // client still sends the last token to start the loop, and the loop's first token comes down.
    const tokenOnly = evaluatePhased(WORKED, ['client', 'server', 'server'], ['server', 'server', 'server']);
    expect([tokenOnly.kvUpBytes, tokenOnly.kvDownBytes]).toEqual([0, 0]);
    expect(tokenOnly.handoverMs).toBeCloseTo(20.008 + 20.0016, 9);
    expect(tokenOnly.e2eMs).toBeCloseTo(tokenOnly.ttftMs + 20 * 3.5 + 40.0096, 9);
  });

  it('names the placement and the index of a bad entry', () => {
    expect(() => evaluatePhased(WORKED, ['client'], ['client', 'client', 'client'])).toThrow('prefillPlacement has 1 entries, the instance has 3 stages');
    expect(() => evaluatePhased(WORKED, ['client', 'client', 'client'], ['client', 'x' as Location, 'client'])).toThrow(
      `decodePlacement[1] must be 'client' or 'server', given "x"`,
    );
  });
});

describe('solvePhasedDp (dp-phased)', () => {
  it('solves the worked example: 20 units of server work against dp 92 (all-server)', () => {
    const r = solvePhasedDp(WORKED);
    expect(r.prefillPlacement).toEqual(['client', 'server', 'client']);
    expect(r.decodePlacement).toEqual(['client', 'client', 'client']);
    expect(r.serverWork).toBe(20);
    expect(r.feasible).toBe(true);
    expect(r.met).toEqual({ ttftMs: true, tpotMs: true });
    const dp = solveGenerationDp(WORKED);
    expect(dp.placement).toEqual(['server', 'server', 'server']);
    expect(dp.serverWork).toBe(92);
  });

  it("returns dp's answer beside the pair, and leaves a pair whose hand-over costs the server more than it saves", () => {
    const { phased, single } = solvePhasedAndSingle(WORKED);
    expect(phased).toEqual(solvePhasedDp(WORKED));
    expect(single).toEqual(solveGenerationDp(WORKED));
    // At 0.3 ms per KiB sent the block's 200 KiB cost 60: 20 + 60 = 80, still the least.
    const cheap = solvePhasedDp({ ...WORKED, kvHandover: { msPerKibOut: 0.3 } });
    expect([cheap.prefillPlacement, cheap.decodePlacement]).toEqual([
      ['client', 'server', 'client'],
      ['client', 'client', 'client'],
    ]);
    expect(cheap.handoverWork).toBeCloseTo(60, 9);
    expect(cheap.serverWork).toBeCloseTo(80, 9);
    // At 0.4 they cost 80 (100 in all): the pair that keeps the block on the server and decodes
    // there (20 + 20 × 3.5 = 90, nothing handed over but the first token) is cheaper.
    const dear = solvePhasedDp({ ...WORKED, kvHandover: { msPerKibOut: 0.4 } });
    expect([dear.prefillPlacement, dear.decodePlacement]).toEqual([
      ['client', 'server', 'client'],
      ['server', 'server', 'server'],
    ]);
    expect([dear.handoverWork, dear.kvDownBytes, dear.serverWork]).toEqual([0, 0, 90]);
  });

  it('gives the same answers with zero hand-over costs as without them', () => {
    for (const inst of cases(13, 120, 5)) {
      const zero = { ...inst, kvHandover: { msPerMessageIn: 0, msPerMessageOut: 0, msPerKibIn: 0, msPerKibOut: 0, chunkBytes: 4096 } };
      const { kvHandover: _, ...plain } = zero;
      expect(solvePhasedDp(zero)).toEqual(solvePhasedDp(plain));
    }
  });

  it('equals brute force over all 4^S pairs on random instances (every SLO subset, loose to infeasible)', () => {
    let feasibleCount = 0;
    let phasedWins = 0;
    for (const inst of cases(7, 400, 5)) {
      const got = solvePhasedDp(inst);
      const want = bruteForce(inst);
      const again = evaluatePhased(inst, got.prefillPlacement, got.decodePlacement);
      expect(close(got.e2eMs, again.e2eMs) && close(got.serverWork, again.serverWork)).toBe(true);
      expect(got.feasible).toBe(want.feasible);
      expect(close(got.serverWork, want.serverWork)).toBe(true);
      if (want.feasible) {
        feasibleCount++;
        if (got.prefillPlacement.some((l, i) => l !== got.decodePlacement[i])) phasedWins++;
      } else expect(close(sloRatio(inst.slo, got), want.ratio)).toBe(true);
      expect(close(got.e2eMs, want.e2eMs)).toBe(true);
    }
    // The sample exercises both outcomes and answers whose phases differ.
    expect(feasibleCount).toBeGreaterThan(100);
    expect(phasedWins).toBeGreaterThan(20);
  });

  it("gives dp's answer when moving a stage between the phases never pays (every cache too large to move in time)", () => {
    for (const inst of cases(23, 150, 6)) {
      // A TTFT alone does not see the hand-over: there even an endless one is allowed.
      if (inst.slo.tpotMs === undefined && inst.slo.e2eMs === undefined) continue;
      const stuck: GenerationInstance = { ...inst, stages: inst.stages.map((s) => ({ ...s, kvBytesPerToken: 1e12 })) };
      const phased = solvePhasedDp(stuck);
      const dp = solveGenerationDp(stuck);
      if (inst.decodeSteps > 0) expect(phased.prefillPlacement).toEqual(phased.decodePlacement);
      expect(phased.feasible).toBe(dp.feasible);
      expect(close(phased.serverWork, dp.serverWork)).toBe(true);
      expect(close(phased.e2eMs, dp.e2eMs)).toBe(true);
    }
  });

  it('equals brute force on private instances, keeping both ends on the client in both phases', () => {
    for (const inst of cases(47, 150, 5).map((i) => ({ ...i, private: true }))) {
      const got = solvePhasedDp(inst);
      const want = bruteForce(inst);
      const S = inst.stages.length;
      expect([got.prefillPlacement[0], got.prefillPlacement[S - 1], got.decodePlacement[0], got.decodePlacement[S - 1]]).toEqual([
        'client',
        'client',
        'client',
        'client',
      ]);
      expect(got.feasible).toBe(want.feasible);
      expect(close(got.serverWork, want.serverWork)).toBe(true);
      expect(close(got.e2eMs, want.e2eMs)).toBe(true);
    }
  });

  it('never needs more server work than dp', () => {
    for (const inst of cases(31, 200, 8)) {
      const phased = solvePhasedDp(inst);
      const dp = solveGenerationDp(inst);
      if (dp.feasible) {
        expect(phased.feasible).toBe(true);
        expect(phased.serverWork).toBeLessThanOrEqual(dp.serverWork * (1 + 1e-9));
      }
    }
  });
});

describe('phased instances', () => {
  it('reads "phased": true and keeps the KV sizes', () => {
    const raw = { ...WORKED, phased: true };
    expect(isPhasedInstance(raw)).toBe(true);
    const v = validatePhasedInstance(raw);
    expect(v.phased).toBe(true);
    expect(v.stages[1].kvBytesPerToken).toBe(2048);
    expect(v.stages[0].kvBytesPerToken).toBeUndefined();
    expect(isPhasedInstance({ ...WORKED })).toBe(false);
  });

  it('names the field, the rule and the value of a bad private flag', () => {
    expect(() => validatePhasedInstance({ ...WORKED, phased: true, private: 'yes' })).toThrow(
      'private must be a boolean (true keeps the first and last stage on the client), given "yes"',
    );
    expect(validatePhasedInstance({ ...WORKED, phased: true, private: true }).private).toBe(true);
  });

  it('names the field, the rule and the value of a bad marker or KV size', () => {
    expect(() => isPhasedInstance({ ...WORKED, phased: 'yes' }, '[2].')).toThrow(
      new InstanceValidationError('[2].phased', 'must be a boolean (true asks for a placement per phase)', 'yes'),
    );
    const bad = { ...WORKED, phased: true, stages: [WORKED.stages[0], { ...WORKED.stages[1], kvBytesPerToken: -1 }, WORKED.stages[2]] };
    expect(() => validatePhasedInstance(bad)).toThrow('stages[1].kvBytesPerToken must be a finite number >= 0, given -1');
  });

  it('reads the hand-over costs, and names the field, the rule and the value of a bad one', () => {
    const v = validatePhasedInstance({ ...WORKED, phased: true, kvHandover: { msPerKibIn: 0.01, chunkBytes: 65_536, other: 1 } });
    expect(v.kvHandover).toEqual({ msPerKibIn: 0.01, chunkBytes: 65_536 });
    expect(validatePhasedInstance({ ...WORKED, phased: true }).kvHandover).toBeUndefined();
    expect(() => validatePhasedInstance({ ...WORKED, phased: true, kvHandover: 3 })).toThrow(
      'kvHandover must be an object {msPerMessageIn?, msPerMessageOut?, msPerKibIn?, msPerKibOut?, chunkBytes?}, given 3',
    );
    expect(() => validatePhasedInstance({ ...WORKED, phased: true, kvHandover: { msPerMessageOut: -0.5 } })).toThrow(
      'kvHandover.msPerMessageOut must be a finite number >= 0, given -0.5',
    );
    expect(validatePhasedInstance({ ...WORKED, phased: true, serverEntryWork: 2, serverPrefillEntryWork: 10 }).serverPrefillEntryWork).toBe(10);
    expect(() => validatePhasedInstance({ ...WORKED, phased: true, serverEntryWork: 2, serverPrefillEntryWork: 43 })).toThrow(
      "serverPrefillEntryWork must be at most (decodeSteps + 1) × serverEntryWork = 42 (serverEntryWork is the mean entry over the generation's passes), given 43",
    );
    expect(() => validatePhasedInstance({ ...WORKED, phased: true, serverPrefillEntryWork: -1 })).toThrow(
      'serverPrefillEntryWork must be a finite number >= 0, given -1',
    );
  });
});
