import { evaluatePlacement, type PlacementInstance } from './index';

// Two stages, round numbers so every figure can be worked out by hand.
const inst: PlacementInstance = {
  stages: [
    { name: 'a', clientMs: 10, serverMs: 1, serverWork: 3, inBytes: 100 },
    { name: 'b', clientMs: 20, serverMs: 2, serverWork: 5, inBytes: 1000 },
  ],
  outBytes: 50,
  uplink: { latencyMs: 4, bytesPerMs: 100 },
  downlink: { latencyMs: 3, bytesPerMs: 500 },
  slaMs: 100,
};

describe('evaluatePlacement', () => {
  it('charges serverEntryWork once per entry to the server', () => {
    const withEntry = { ...inst, stages: [...inst.stages, { name: 'c', clientMs: 1, serverMs: 1, serverWork: 7, inBytes: 10 }], serverEntryWork: 100 };
    expect(evaluatePlacement(withEntry, ['server', 'server', 'server']).serverWork).toBe(3 + 5 + 7 + 100);
    expect(evaluatePlacement(withEntry, ['server', 'client', 'server']).serverWork).toBe(3 + 7 + 200);
    expect(evaluatePlacement(withEntry, ['client', 'client', 'client']).serverWork).toBe(0);
  });

  it.each([
    // all-client: 10 + 20, no transfers.
    [['client', 'client'], 30, 0, 0],
    // all-server: up(100 B) = 4 + 1, compute 1 + 2, down(50 B) = 3 + 0.1.
    [['server', 'server'], 5 + 3 + 3.1, 8, 2],
    // C then S: 10, up(1000 B) = 4 + 10, 2, down(50 B) = 3.1.
    [['client', 'server'], 10 + 14 + 2 + 3.1, 5, 2],
    // S then C: up 5, 1, down(1000 B) = 3 + 2, 20; no final download.
    [['server', 'client'], 5 + 1 + 5 + 20, 3, 2],
  ] as const)('prices %j exactly', (placement, latencyMs, serverWork, switches) => {
    const got = evaluatePlacement(inst, placement);
    expect(got.latencyMs).toBeCloseTo(latencyMs, 12);
    expect(got.serverWork).toBe(serverWork);
    expect(got.switches).toBe(switches);
  });

  it('counts every crossing: S C S has four transfers', () => {
    const three: PlacementInstance = { ...inst, stages: [...inst.stages, { name: 'c', clientMs: 1, serverMs: 1, serverWork: 1, inBytes: 0 }] };
    expect(evaluatePlacement(three, ['server', 'client', 'server']).switches).toBe(4);
  });

  it('rejects a placement of the wrong length or with an unknown side', () => {
    expect(() => evaluatePlacement(inst, ['client'])).toThrow(RangeError);
    expect(() => evaluatePlacement(inst, ['client', 'edge' as 'client'])).toThrow(/placement\[1\] must be 'client' or 'server'/);
  });
});
