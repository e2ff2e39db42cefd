import { BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  ExecutorServiceService,
  fromWireTensor,
  GATHER_MIN_BYTES,
  GatherWriter,
  SessionRequest,
  SessionResponse,
  toWireTensor,
  type HostTensor,
} from '../src';

const floats = (n: number, seed = 1): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 1000 + i) * 100);

function stepRequest(t: HostTensor, seq = 7): SessionRequest {
  return { kind: { $case: 'step', value: { seq, stageBegin: 3, stageEnd: 9, input: toWireTensor(t), sample: true } } };
}

function resultResponse(t: HostTensor, seq = 7): SessionResponse {
  return { kind: { $case: 'result', value: { seq, output: { $case: 'tensor', value: toWireTensor(t) }, computeMs: 1.5, queueMs: 0.25 } } };
}

describe('GatherWriter', () => {
  // Sizes around the gather threshold and around varint width changes of the nested lengths
  // (2^7, 2^14, 2^21 bytes), so fork/join length prefixes of 1 to 4 bytes are all exercised.
  const counts = [0, 1, 31, 32, GATHER_MIN_BYTES / 4 - 1, GATHER_MIN_BYTES / 4, 4095, 4096, 524_287, 524_288, 786_432];

  it.each(counts)('encodes a step and a result of %i floats byte for byte as the stock writer', (n) => {
    const t: HostTensor = { dtype: 'float32', shape: [1, n], data: floats(n) };
    for (const [fns, msg] of [[SessionRequest, stepRequest(t)], [SessionResponse, resultResponse(t)]] as const) {
      const stock = Buffer.from((fns.encode as (m: typeof msg, w?: BinaryWriter) => BinaryWriter)(msg).finish());
      const gathered = ((fns.encode as (m: typeof msg, w?: BinaryWriter) => BinaryWriter)(msg, new GatherWriter()) as GatherWriter).finish();
      expect(Buffer.isBuffer(gathered)).toBe(true);
      expect(gathered.equals(stock)).toBe(true);
    }
  });

  it('encodes messages without tensors (open, opened) as the stock writer', () => {
    const open: SessionRequest = { kind: { $case: 'open', value: { clientId: 'c'.repeat(300), planEpoch: 12, modelId: 'm1' } } };
    const opened: SessionResponse = { kind: { $case: 'opened', value: { sessionId: 's', modelId: 'm'.repeat(2000), stageCount: 26, maxContextTokens: 1024 } } };
    expect((SessionRequest.encode(open, new GatherWriter()) as GatherWriter).finish().equals(Buffer.from(SessionRequest.encode(open).finish()))).toBe(true);
    expect((SessionResponse.encode(opened, new GatherWriter()) as GatherWriter).finish().equals(Buffer.from(SessionResponse.encode(opened).finish()))).toBe(true);
  });

  it('is reusable after finish() and refuses an unbalanced fork', () => {
    const w = new GatherWriter();
    const t: HostTensor = { dtype: 'float32', shape: [4096], data: floats(4096) };
    const a = (SessionResponse.encode(resultResponse(t), w) as GatherWriter).finish();
    const b = (SessionResponse.encode(resultResponse(t), w) as GatherWriter).finish();
    expect(b.equals(a)).toBe(true);
    w.fork();
    expect(() => w.finish()).toThrow('fork() without join()');
    expect(() => new GatherWriter().join()).toThrow('fork stack empty');
  });

  it('sends what the tensor held at serialization: later changes to the source do not leak into the bytes', () => {
    const data = floats(100_000);
    const original = data.slice();
    const wire = ExecutorServiceService.session.requestSerialize(stepRequest({ dtype: 'float32', shape: [1, data.length], data }));
    data.fill(42); // the host tensor is reused after the message was serialized
    const back = SessionRequest.decode(wire);
    if (back.kind?.$case !== 'step') throw new Error('not a step');
    expect([...fromWireTensor(back.kind.value.input, 'x').data as Float32Array]).toEqual([...original]);
  });
});

describe('fromWireTensor memory', () => {
  it('views aligned bytes without copying (the decoder gives each tensor its own Buffer)', () => {
    const n = 70_000;
    const wire = ExecutorServiceService.session.responseSerialize(resultResponse({ dtype: 'float32', shape: [1, n], data: floats(n) }));
    const m = ExecutorServiceService.session.responseDeserialize(wire);
    if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'tensor') throw new Error('not a tensor');
    const wireTensor = m.kind.value.output.value;
    const host = fromWireTensor(wireTensor, 'r');
    expect(host.data.buffer).toBe(wireTensor.data.buffer);
    expect(host.data.byteOffset).toBe(wireTensor.data.byteOffset);
    expect([...host.data.subarray(0, 5)]).toEqual([...floats(n).subarray(0, 5)]);
  });

  it.each([1, 2, 3])('copies float32 bytes at offset %i into aligned memory with the same values', (off) => {
    const src = floats(1000, 3);
    const raw = Buffer.alloc(off + src.byteLength);
    Buffer.from(src.buffer).copy(raw, off);
    const view = raw.subarray(off);
    const t = fromWireTensor({ dtype: 1, shape: [1000], data: view }, 'x');
    expect(t.data.byteOffset % 4).toBe(0);
    expect(t.data.buffer).not.toBe(raw.buffer);
    expect([...t.data]).toEqual([...src]);
  });

  it('copies int64 bytes that are 4- but not 8-aligned, keeping values past 2^53', () => {
    const ids = BigInt64Array.of(0n, -1n, 9007199254740993n, 50256n);
    const backing = new ArrayBuffer(4 + ids.byteLength);
    new Uint8Array(backing, 4).set(new Uint8Array(ids.buffer));
    const t = fromWireTensor({ dtype: 2, shape: [1, 4], data: Buffer.from(backing, 4, ids.byteLength) }, 'x');
    expect(t.data.byteOffset % 8).toBe(0);
    expect([...(t.data as BigInt64Array)]).toEqual([...ids]);
  });

  it('views an aligned int64 slice in place', () => {
    const backing = new ArrayBuffer(64);
    new BigInt64Array(backing, 8, 2).set([5n, 6n]);
    const t = fromWireTensor({ dtype: 2, shape: [2], data: Buffer.from(backing, 8, 16) }, 'x');
    expect(t.data.buffer).toBe(backing);
    expect([...(t.data as BigInt64Array)]).toEqual([5n, 6n]);
  });
});
