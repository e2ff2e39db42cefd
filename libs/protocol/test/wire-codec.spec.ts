import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  ExecutorServiceService,
  fromWireTensor,
  GATHER_MIN_BYTES,
  GatherWriter,
  GRPC_BODY_OFFSET,
  SessionRequest,
  SessionResponse,
  toWireTensor,
  type HostTensor,
  viewDeserialize,
} from '../src';

/** A message as grpc-js's receiver holds it: 5-byte frame header and body in one fresh buffer. */
function grpcFrame(body: Buffer): Buffer {
  const frame = Buffer.alloc(body.length + GRPC_BODY_OFFSET);
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, GRPC_BODY_OFFSET);
  return frame;
}

const floats = (n: number, seed = 1): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 1000 + i) * 100);

function stepRequest(t: HostTensor, seq = '7'): SessionRequest {
  return { kind: { $case: 'step', value: { seq, stageBegin: 3, stageEnd: 9, input: toWireTensor(t), sample: true } } };
}

function resultResponse(t: HostTensor, seq = '7'): SessionResponse {
  return { kind: { $case: 'result', value: { seq, output: { $case: 'tensor', value: toWireTensor(t) }, computeMs: 1.5, queueMs: 0.25, serviceMs: 1.5 } } };
}

describe('GatherWriter', () => {
  // Sizes around the gather threshold and around varint width changes of the nested lengths
  // (2^7, 2^14, 2^21 bytes), so fork/join length prefixes of 1 to 4 bytes are all exercised.
  const counts = [0, 1, 31, 32, GATHER_MIN_BYTES / 4 - 1, GATHER_MIN_BYTES / 4, 4095, 4096, 524_287, 524_288, 786_432];

  it.each(counts)('encodes a step and a result of %i floats byte for byte as the stock writer', (n) => {
    const t: HostTensor = { dtype: 'float32', shape: [1, n], data: floats(n) };
    for (const [fns, msg] of [
      [SessionRequest, stepRequest(t)],
      [SessionResponse, resultResponse(t)],
    ] as const) {
      const stock = Buffer.from((fns.encode as (m: typeof msg, w?: BinaryWriter) => BinaryWriter)(msg).finish());
      const gathered = ((fns.encode as (m: typeof msg, w?: BinaryWriter) => BinaryWriter)(msg, new GatherWriter()) as GatherWriter).finish();
      expect(Buffer.isBuffer(gathered)).toBe(true);
      expect(gathered.equals(stock)).toBe(true);
    }
  });

  it('encodes messages without tensors (open, opened) as the stock writer', () => {
    const open: SessionRequest = { kind: { $case: 'open', value: { clientId: 'c'.repeat(300), planEpoch: '12', modelId: 'm1' } } };
    const opened: SessionResponse = { kind: { $case: 'opened', value: { sessionId: 's', modelId: 'm'.repeat(2000), stageCount: 26, maxContextTokens: 1024 } } };
    expect((SessionRequest.encode(open, new GatherWriter()) as GatherWriter).finish().equals(Buffer.from(SessionRequest.encode(open).finish()))).toBe(true);
    expect((SessionResponse.encode(opened, new GatherWriter()) as GatherWriter).finish().equals(Buffer.from(SessionResponse.encode(opened).finish()))).toBe(
      true,
    );
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
    expect([...(fromWireTensor(back.kind.value.input, 'x').data as Float32Array)]).toEqual([...original]);
  });
});

describe('executor service serializers', () => {
  it('write responses into one reused buffer (grpc-js copies each at once) and requests into fresh ones', () => {
    const a = resultResponse({ dtype: 'float32', shape: [1, 5000], data: floats(5000, 1) });
    const b = resultResponse({ dtype: 'float32', shape: [1, 5000], data: floats(5000, 2) });
    ExecutorServiceService.session.responseSerialize(a); // sizes the reused buffer
    const first = ExecutorServiceService.session.responseSerialize(a);
    const firstBytes = Buffer.from(first);
    const second = ExecutorServiceService.session.responseSerialize(b);
    expect(second.buffer).toBe(first.buffer);
    expect(first.equals(firstBytes)).toBe(false); // overwritten: the documented reuse rule
    const r1 = ExecutorServiceService.session.requestSerialize(stepRequest({ dtype: 'float32', shape: [1, 5000], data: floats(5000, 1) }));
    const r2 = ExecutorServiceService.session.requestSerialize(stepRequest({ dtype: 'float32', shape: [1, 5000], data: floats(5000, 2) }));
    expect(r1.buffer === r2.buffer).toBe(false);
  });
});

describe('fromWireTensor memory', () => {
  it('uses a received tensor in place: the serializer aligns it, the deserializer and fromWireTensor view it', () => {
    for (const n of [256, 4096, 65_536, 786_432]) {
      for (const seq of ['1', '300', String(2 ** 40), '18446744073709551615']) {
        const sent = floats(n, Number(seq));
        const wire = ExecutorServiceService.session.responseSerialize(resultResponse({ dtype: 'float32', shape: [1, n], data: sent }, seq));
        const frame = grpcFrame(wire);
        const m = ExecutorServiceService.session.responseDeserialize(frame.subarray(GRPC_BODY_OFFSET));
        if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'tensor') throw new Error('not a tensor');
        expect(m.kind.value.seq).toBe(seq);
        const wireTensor = m.kind.value.output.value;
        const host = fromWireTensor(wireTensor, 'r');
        expect({ n, seq, inPlace: wireTensor.data.buffer === frame.buffer && host.data.buffer === frame.buffer, aligned: host.data.byteOffset % 8 }).toEqual({
          n,
          seq,
          inPlace: true,
          aligned: 0,
        });
        expect(Buffer.from(host.data.buffer, host.data.byteOffset, host.data.byteLength).equals(Buffer.from(sent.buffer))).toBe(true);
      }
    }
  });

  it('decodes what the generated decoder decodes, padding and all (requests and responses, every kind)', () => {
    const t = (n: number): HostTensor => ({ dtype: 'float32', shape: [1, n], data: floats(n) });
    const ids: HostTensor = { dtype: 'int64', shape: [1, 3], data: BigInt64Array.of(1n, 2n, 9007199254740993n) };
    const requests: SessionRequest[] = [
      { kind: { $case: 'open', value: { clientId: 'c', planEpoch: '3', modelId: 'm' } } },
      stepRequest(t(3)),
      stepRequest(ids),
      stepRequest(t(300)),
      stepRequest(t(70_000)),
    ];
    const responses: SessionResponse[] = [
      { kind: { $case: 'opened', value: { sessionId: 's', modelId: 'm', stageCount: 6, maxContextTokens: 64 } } },
      { kind: { $case: 'result', value: { seq: '2', output: { $case: 'token', value: 50256 }, computeMs: 2, queueMs: 0, serviceMs: 2 } } },
      resultResponse(t(5)),
      resultResponse(t(70_000)),
    ];
    const norm = (m: unknown): string => JSON.stringify(m, (_k, v) => (Buffer.isBuffer(v) ? v.toString('hex') : v));
    for (const m of requests) {
      const body = grpcFrame(ExecutorServiceService.session.requestSerialize(m)).subarray(GRPC_BODY_OFFSET);
      expect(norm(ExecutorServiceService.session.requestDeserialize(body))).toBe(norm(SessionRequest.decode(body)));
      expect(norm(SessionRequest.decode(body))).toBe(norm(SessionRequest.decode(SessionRequest.encode(m).finish())));
    }
    for (const m of responses) {
      const body = grpcFrame(ExecutorServiceService.session.responseSerialize(m)).subarray(GRPC_BODY_OFFSET);
      expect(norm(ExecutorServiceService.session.responseDeserialize(body))).toBe(norm(SessionResponse.decode(body)));
      expect(norm(SessionResponse.decode(body))).toBe(norm(SessionResponse.decode(SessionResponse.encode(m).finish())));
    }
  });

  it('falls back to the generated decoder when a placeholder cannot be put back', () => {
    // A decoder that drops what it decoded loses the placeholder: the result must still be right.
    let calls = 0;
    const dropping = viewDeserialize({
      decode(input: BinaryReader | Uint8Array): SessionRequest {
        calls++;
        const m = SessionRequest.decode(input);
        return calls === 1 ? { kind: undefined } : m;
      },
    });
    const wire = ExecutorServiceService.session.requestSerialize(stepRequest({ dtype: 'float32', shape: [1, 4096], data: floats(4096) }));
    const m = dropping(grpcFrame(wire).subarray(GRPC_BODY_OFFSET));
    expect(calls).toBe(2);
    if (m.kind?.$case !== 'step') throw new Error('not a step');
    expect(fromWireTensor(m.kind.value.input, 'x').data[10]).toBe(floats(4096)[10]);
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
