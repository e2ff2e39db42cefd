import { BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  AgentServiceService,
  capStatus,
  cut,
  decodeProblem,
  ExecutorServiceService,
  firstNonFinite,
  fromWireTensor,
  GATHER_MIN_BYTES,
  renderShape,
  safeService,
  SessionRequest,
  toWireTensor,
} from '../src';

/** A Step request whose input tensor has `dims` as its shape, written as raw int64 decimal strings (past what a number holds). */
function stepWithDims(dims: string[], dataBytes: number): Buffer {
  const w = new BinaryWriter();
  w.uint32(18).fork(); // kind.step
  w.uint32(8).uint64('1'); // seq
  w.uint32(16).uint32(1); // stage_begin
  w.uint32(24).uint32(2); // stage_end
  w.uint32(34).fork(); // input
  w.uint32(8).int32(1); // dtype float32
  w.uint32(18).fork();
  for (const d of dims) w.int64(d);
  w.join();
  w.uint32(26).bytes(new Uint8Array(dataBytes));
  w.join();
  w.join();
  return Buffer.from(w.finish());
}

describe('session deserialization never throws', () => {
  const deserialize = ExecutorServiceService.session.requestDeserialize;

  it.each([
    ['a small tensor', 64],
    ['a large tensor (decoded as a view)', GATHER_MIN_BYTES * 4],
  ])('names a tensor dimension past 2^53 in %s', (_what, bytes) => {
    const m = deserialize(stepWithDims(['1', '1152921504606846976', String(bytes / 4)], bytes));
    const p = decodeProblem(m);
    expect(p?.field).toBe('step.input.shape[1]');
    expect(p?.message).toBe('step.input.shape[1] must be an integer in -9007199254740991..9007199254740991, given 1152921504606846976');
  });

  it('keeps dimensions within range as they were, with no problem', () => {
    const m = deserialize(stepWithDims(['1', '2', '16'], 128));
    expect(decodeProblem(m)).toBeUndefined();
    expect(m.kind?.$case === 'step' && m.kind.value.input?.shape).toEqual([1, 2, 16]);
  });

  it('decodes seq 2^64-1 exactly', () => {
    const w = new BinaryWriter();
    w.uint32(18).fork().uint32(8).uint64('18446744073709551615').join();
    const m = deserialize(Buffer.from(w.finish()));
    expect(decodeProblem(m)).toBeUndefined();
    expect(m.kind?.$case === 'step' && m.kind.value.seq).toBe('18446744073709551615');
  });

  it.each([
    ['a truncated length', [0x12, 0xff, 0x01]],
    ['an invalid wire type', [0x0f]],
    ['a truncated varint', [0x08, 0xff]],
  ])('flags %s as a problem naming SessionRequest instead of throwing', (_what, bytes) => {
    const m = deserialize(Buffer.from(bytes));
    expect(m).toEqual(SessionRequest.decode(new Uint8Array(0)));
    expect(decodeProblem(m)?.message).toMatch(/^SessionRequest must be a valid protobuf encoding of the message, given /);
  });

  it('wraps any service so a request that does not decode is flagged, not thrown', () => {
    const safe = safeService(AgentServiceService);
    const m = safe.generate.requestDeserialize(Buffer.from([0x0a, 0xff]));
    expect(decodeProblem(m)?.field).toBe('Generate request');
    const ok = safe.generate.requestDeserialize(
      Buffer.from(AgentServiceService.generate.requestSerialize({ input: { $case: 'ids', value: { ids: [1, 2] } }, maxNewTokens: 3, placement: '' })),
    );
    expect(decodeProblem(ok)).toBeUndefined();
    expect(ok.maxNewTokens).toBe(3);
  });
});

describe('echoed values are cut', () => {
  it('cuts long strings and shapes, saying how long they were', () => {
    expect(cut('abc')).toBe('abc');
    const c = cut('x'.repeat(20_000));
    expect(c.length).toBeLessThanOrEqual(120);
    expect(c).toContain('(20000 chars)');
    expect(renderShape([1, 2, 64])).toBe('[1, 2, 64]');
    const s = renderShape(new Array(5000).fill(7));
    expect(s.length).toBeLessThanOrEqual(120);
    expect(s).toContain('(5000 dims)');
  });

  it('caps a whole message at 1 KiB of UTF-8 without splitting a character', () => {
    expect(capStatus('short')).toBe('short');
    for (const ch of ['a', 'é', '€', '😀']) {
      const out = capStatus(ch.repeat(5000));
      expect(Buffer.byteLength(out, 'utf8')).toBeLessThanOrEqual(1024);
      expect(out.endsWith('...')).toBe(true);
      expect(out).not.toContain('\uFFFD');
      expect(Buffer.from(out, 'utf8').toString('utf8')).toBe(out);
    }
  });

  it('fromWireTensor cuts a shape of 5,000 dims in its message', () => {
    const shape = new Array(5000).fill(1);
    expect(() => fromWireTensor({ dtype: 1, shape, data: Buffer.alloc(12) }, 'step.input')).toThrow(
      /^step\.input\.data must hold 4 bytes for shape \[1,1,.*\(5000 dims\) of 4-byte elements, given 12 bytes$/,
    );
    try {
      fromWireTensor({ dtype: 1, shape, data: Buffer.alloc(12) }, 'step.input');
    } catch (e) {
      expect((e as Error).message.length).toBeLessThan(400);
    }
  });
});

describe('firstNonFinite', () => {
  it('finds the first NaN or ±Infinity, and nothing in finite data', () => {
    const x = new Float32Array(1000).fill(1);
    expect(firstNonFinite(x)).toBe(-1);
    x[999] = Number.NaN;
    expect(firstNonFinite(x)).toBe(999);
    x[500] = Number.NEGATIVE_INFINITY;
    expect(firstNonFinite(x)).toBe(500);
    x[3] = Number.POSITIVE_INFINITY;
    expect(firstNonFinite(x)).toBe(3);
    expect(firstNonFinite(Float32Array.of(3.4028234663852886e38, -1.4e-45, -0, 0))).toBe(-1);
  });

  it('works on a view at an offset (a tensor received in place)', () => {
    const backing = new Float32Array(16).fill(2);
    backing[2] = Number.NaN;
    backing[9] = Number.NaN;
    const t = fromWireTensor(toWireTensor({ dtype: 'float32', shape: [8], data: backing.subarray(4, 12) }), 'x');
    expect(firstNonFinite(t.data as Float32Array)).toBe(5);
  });
});
