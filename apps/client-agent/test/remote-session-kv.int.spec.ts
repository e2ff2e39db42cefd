import * as grpc from '@grpc/grpc-js';
import type { Float32Tensor } from '@tandem/model';
import {
  ExecutorServiceClient,
  ExecutorServiceService,
  fromWireTensor,
  toWireTensor,
  type ExecutorServiceServer,
  type SessionRequest,
  type SessionResponse,
} from '@tandem/protocol';
import { bindInsecure } from '@tandem/service-kit';
import { kvChunkTokens, KV_CHUNK_BYTES, RemoteSession } from '../src/remote-session';

// RemoteSession's kv_put and kv_take on the wire, against a stand-in executor on a real gRPC
// port that records what it receives and answers kv_take with the chunks a test gives it.

type KvPut = Extract<NonNullable<SessionRequest['kind']>, { $case: 'kvPut' }>['value'];
type KvChunk = Extract<NonNullable<SessionResponse['kind']>, { $case: 'kvChunk' }>['value'];

const H = 12;
const HD = 64;
/** Keys or values [1, H, T, HD] whose element (h, t, d) is h * 1e6 + t * 100 + d. */
const kvOf = (T: number, add = 0): Float32Tensor => ({
  dtype: 'float32',
  shape: [1, H, T, HD],
  data: Float32Array.from({ length: H * T * HD }, (_, i) => Math.floor(i / (T * HD)) * 1e6 + (Math.floor(i / HD) % T) * 100 + (i % HD) + add),
});
/** Positions [from, to) of `t`. */
const positions = (t: Float32Tensor, from: number, to: number): Float32Tensor => {
  const T = t.shape[2];
  const out = new Float32Array(H * (to - from) * HD);
  for (let h = 0; h < H; h++) out.set(t.data.subarray((h * T + from) * HD, (h * T + to) * HD), h * (to - from) * HD);
  return { dtype: 'float32', shape: [1, H, to - from, HD], data: out };
};

describe('RemoteSession kv_put and kv_take', () => {
  let server: grpc.Server;
  let client: ExecutorServiceClient;
  /** What the stand-in received, per session. */
  const received: SessionRequest[][] = [];
  /** How the stand-in answers a kv_take (default: none). */
  let answerTake: (seq: string, stage: number, maxChunkBytes: number) => KvChunk[] = () => [];

  beforeAll(async () => {
    server = new grpc.Server();
    const impl: Pick<ExecutorServiceServer, 'session'> = {
      session: (call: grpc.ServerDuplexStream<SessionRequest, SessionResponse>) => {
        const got: SessionRequest[] = [];
        received.push(got);
        call.on('data', (m: SessionRequest) => {
          got.push(m);
          const k = m.kind;
          if (k?.$case === 'open') call.write({ kind: { $case: 'opened', value: { sessionId: 's', modelId: 'm', stageCount: 6, maxContextTokens: 1024 } } });
          else if (k?.$case === 'step')
            call.write({
              kind: { $case: 'result', value: { seq: k.value.seq, output: { $case: 'token', value: 7 }, computeMs: 1, queueMs: 0, serviceMs: 1 } },
            });
          else if (k?.$case === 'kvTake')
            for (const c of answerTake(k.value.seq, k.value.stage, k.value.maxChunkBytes)) call.write({ kind: { $case: 'kvChunk', value: c } });
        });
        call.on('end', () => call.end());
      },
    };
    server.addService(ExecutorServiceService, {
      ...impl,
      getStatus: (_c: unknown, cb: (e: null, r: unknown) => void) => cb(null, {}),
    } as ExecutorServiceServer);
    const port = await bindInsecure(server, '127.0.0.1:0');
    client = new ExecutorServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  });
  afterAll(() => {
    client?.close();
    server?.forceShutdown();
  });

  const open = (): Promise<RemoteSession> => RemoteSession.open(client, { clientId: 'dev', planEpoch: 0, modelId: '', deadline: Date.now() + 10_000 });
  const ids = { dtype: 'int64' as const, shape: [1, 1], data: BigInt64Array.of(1n) };
  const puts = (got: SessionRequest[]): KvPut[] => got.flatMap((m) => (m.kind?.$case === 'kvPut' ? [m.kind.value] : []));

  it('puts an attention stage in chunks of whole positions of at most 1 MiB of keys plus values, and a count-only stage as one message', async () => {
    const s = await open();
    const T = 300; // 6144 bytes a position: 170 positions a chunk
    const key = kvOf(T);
    const value = kvOf(T, 0.5);
    expect(kvChunkTokens(H, HD, KV_CHUNK_BYTES)).toBe(170);
    expect(s.kvPut(3, { tokens: T, key, value })).toBe(2 * 4 * H * T * HD);
    expect(s.kvPut(4, { tokens: T })).toBe(0);
    expect(s.kvPut(1, { tokens: 5, key: kvOf(5), value: kvOf(5) }, 3 * 6144)).toBe(5 * 6144); // a small bound: 3 + 2 positions
    await s.step(0, 1, ids, false); // the puts are not answered: a step after them shows they arrived, in order
    s.end();
    const got = received[received.length - 1];
    const p = puts(got);
    expect(p.map((x) => [x.stage, x.offset, x.tokens, x.key !== undefined])).toEqual([
      [3, 0, 170, true],
      [3, 170, 130, true],
      [4, 0, 300, false],
      [1, 0, 3, true],
      [1, 3, 2, true],
    ]);
    expect(got[got.length - 1].kind?.$case).toBe('step');
    for (const x of p.filter((c) => c.key)) expect(x.key!.data.byteLength + x.value!.data.byteLength).toBeLessThanOrEqual(KV_CHUNK_BYTES);
    // the chunks are the positions of every head, in order
    expect(fromWireTensor(p[1].key, 'k').data).toEqual(positions(key, 170, 300).data);
    expect(fromWireTensor(p[0].value, 'v').data).toEqual(positions(value, 0, 170).data);
  });

  it('takes a stage from its chunks in order, after the answer to an earlier step, and a count-only stage from one chunk', async () => {
    const T = 7;
    const key = kvOf(T);
    const value = kvOf(T, 0.25);
    const asked: number[] = [];
    answerTake = (seq, stage, max) => {
      asked.push(max);
      if (stage === 2) return [{ seq, stage, offset: 0, tokens: T, key: undefined, value: undefined, last: true }];
      return [
        [0, 3],
        [3, 6],
        [6, 7],
      ].map(([a, b], i) => ({
        seq,
        stage,
        offset: a,
        tokens: b - a,
        key: toWireTensor(positions(key, a, b)),
        value: toWireTensor(positions(value, a, b)),
        last: i === 2,
      }));
    };
    const s = await open();
    const step = s.step(0, 1, ids, false);
    const [kv, count] = await Promise.all([s.kvTake(1, 4096), s.kvTake(2)]);
    expect((await step).output).toBe(7);
    expect(asked).toEqual([4096, 0]);
    expect(kv.chunks).toBe(3);
    expect(kv.bytes).toBe(2 * 4 * H * T * HD);
    expect(kv.state.tokens).toBe(T);
    expect(kv.state.key?.shape).toEqual([1, H, T, HD]);
    expect(kv.state.key?.data).toEqual(key.data);
    expect(kv.state.value?.data).toEqual(value.data);
    expect(count).toEqual({ state: { tokens: T }, bytes: 0, chunks: 1 });
    s.end();
  });

  it('fails the session on a chunk out of order, naming what came and what was expected', async () => {
    answerTake = (seq, stage) => [
      { seq, stage, offset: 0, tokens: 2, key: toWireTensor(kvOf(2)), value: toWireTensor(kvOf(2)), last: false },
      { seq, stage, offset: 3, tokens: 1, key: toWireTensor(kvOf(1)), value: toWireTensor(kvOf(1)), last: true },
    ];
    const s = await open();
    await expect(s.kvTake(1)).rejects.toThrow(/with chunk \{seq \d+, stage 1, offset 3, tokens 1\}, expected offset 2/);
    await expect(s.step(0, 1, ids, false)).rejects.toThrow('expected offset 2');
    answerTake = (seq, stage) => [{ seq, stage, offset: 0, tokens: 2, key: toWireTensor(kvOf(3)), value: toWireTensor(kvOf(3)), last: true }];
    const t = await open();
    await expect(t.kvTake(1)).rejects.toThrow('expected float32 [1, H, 2, hd] alike');
  });
});
