import { EventEmitter, once } from 'node:events';
import { createConnection, createServer, type Socket } from 'node:net';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { toWireTensor, type HostTensor, type SessionRequest, type SessionResponse } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import type { StageKind } from '@tandem/model';
import { SessionCache, type StageEngine, type StageKv } from './engine';
import { KvBudget } from './kv-budget';
import { StageScheduler } from './scheduler';
import { SplitSession } from './split-session';

const VOCAB = 4;
const ADMIT_ALL = { admit: (): void => {}, leave: (): void => {} };

/**
 * A fake three-stage engine (embed, attn, head): the hidden state carries each token id, and
 * the head's logits pick (last id + 1) mod 4, so a generation from [0] yields 1, 2, 3, 0, ...
 */
class CountingEngine implements StageEngine {
  readonly modelId = 'fake';
  readonly stageCount = 3;
  readonly nEmbd = 1;
  readonly nHead = 1;
  readonly vocabSize = VOCAB;
  readonly nPositions = 64;
  calls = 0;
  /** When set, engine calls wait for it (a slow step). */
  gate?: Promise<void>;
  stageKind(s: number): StageKind {
    return (['embed', 'attn', 'head'] as const)[s];
  }
  newCache(): SessionCache {
    return new SessionCache(undefined, this.stageCount);
  }
  releaseCache(): void {}
  async runBatch(stage: number, inputs: readonly HostTensor[]): Promise<HostTensor[]> {
    this.calls++;
    if (this.gate) await this.gate;
    return inputs.map((t): HostTensor => {
      const T = t.shape[1];
      if (stage === 0) return { dtype: 'float32', shape: [1, T, 1], data: Float32Array.from(t.data as BigInt64Array, Number) };
      if (stage === 1) return t;
      const logits = new Float32Array(T * VOCAB);
      for (let r = 0; r < T; r++) logits[r * VOCAB + (((t.data as Float32Array)[r] + 1) % VOCAB)] = 1;
      return { dtype: 'float32', shape: [1, T, VOCAB], data: logits };
    });
  }
  async warmup(): Promise<void> {}
  async close(): Promise<void> {}
}

/** CountingEngine that can hand state over: the attention stage's keys and values are the token ids it took, [1, 1, T, 1]. */
class HandOverEngine extends CountingEngine {
  /** The ids stage 1 holds, per cache. */
  private readonly held = new Map<SessionCache, number[]>();
  override async runBatch(stage: number, inputs: readonly HostTensor[], caches?: readonly SessionCache[]): Promise<HostTensor[]> {
    if (stage === 1) inputs.forEach((t, i) => this.ids(caches?.[i]).push(...Array.from(t.data as Float32Array)));
    return super.runBatch(stage, inputs);
  }
  /** Hand-over calls begun, in order (`put 1`, `take 0`, ...). */
  readonly handOvers: string[] = [];
  /** When set, hand-over calls wait for it after they begin (an engine busy with other work). */
  handOverGate?: Promise<void>;
  async putState(stage: number, cache: SessionCache, tokens: number, kv: StageKv | undefined): Promise<void> {
    this.handOvers.push(`put ${stage}`);
    if (this.handOverGate) await this.handOverGate;
    if (stage === 1 && kv) this.ids(cache).push(...Array.from(kv.key.data));
    cache.advance(stage, stage + 1, tokens);
  }
  async takeState(stage: number, cache: SessionCache): Promise<StageKv | undefined> {
    this.handOvers.push(`take ${stage}`);
    if (this.handOverGate) await this.handOverGate;
    cache.clearStage(stage);
    if (stage !== 1) return undefined;
    const ids = this.ids(cache).splice(0);
    const t = { dtype: 'float32' as const, shape: [1, 1, ids.length, 1], data: Float32Array.from(ids) };
    return { key: t, value: { ...t, data: t.data.slice() } };
  }
  private ids(cache: SessionCache | undefined): number[] {
    if (!cache) throw new Error('no cache');
    let v = this.held.get(cache);
    if (!v) this.held.set(cache, (v = []));
    return v;
  }
}

/** A server stream whose writes report a full buffer until the test emits 'drain'. */
class SlowReaderCall extends EventEmitter {
  readonly written: SessionResponse[] = [];
  write(m: SessionResponse): boolean {
    this.written.push(m);
    return false;
  }
  end(): void {
    this.emit('ended-ok');
  }
  tokens(): number[] {
    return this.written.flatMap((m) => (m.kind?.$case === 'token' ? [m.kind.value.token] : []));
  }
}

/** Position `i` of a [1, 1, T, 1] wire tensor of keys or values, as a one-position tensor. */
function sliceIds(t: ReturnType<typeof toWireTensor>, i: number): ReturnType<typeof toWireTensor> {
  const all = new Float32Array(Uint8Array.from(t.data).buffer);
  return toWireTensor({ dtype: 'float32', shape: [1, 1, 1, 1], data: all.slice(i, i + 1) });
}

/** Lets queued immediates and promise continuations run (the scheduler starts on setImmediate). */
const settle = async (): Promise<void> => {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
};

describe('SplitSession server-side decoding', () => {
  const log = createLogger({ name: 'test', level: 'silent' });

  /** A session on `engine` over a slow-reading stream, opened by client 't'. */
  function open(idleTimeoutMs: number, engine: CountingEngine, kv?: KvBudget): { call: SlowReaderCall; engine: CountingEngine; session: SplitSession } {
    const scheduler = new StageScheduler(engine, { batching: true, maxBatch: 8 });
    const call = new SlowReaderCall();
    const session = new SplitSession(
      call as unknown as ServerDuplexStream<SessionRequest, SessionResponse>,
      engine,
      scheduler,
      { maxContextTokens: 64, idleTimeoutMs },
      log,
      ADMIT_ALL,
      undefined,
      kv,
    );
    call.emit('data', { kind: { $case: 'open', value: { clientId: 't', planEpoch: 0, modelId: '' } } });
    return { call, engine, session };
  }

  /** An opened session that was asked to generate 4 tokens. */
  function start(idleTimeoutMs = 60_000, engine = new CountingEngine()): { call: SlowReaderCall; engine: CountingEngine; session: SplitSession } {
    const { call, session } = open(idleTimeoutMs, engine);
    call.emit('data', {
      kind: { $case: 'generate', value: { seq: 3, input: toWireTensor({ dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(0n) }), maxNewTokens: 4 } },
    });
    return { call, engine, session };
  }

  it('waits for the stream to drain before making the next token when the client reads slowly', async () => {
    const { call, engine, session } = start();
    await settle();
    expect(call.tokens()).toEqual([1]);
    expect(engine.calls).toBe(3); // one step, not more, while the write buffer is full
    for (let k = 2; k <= 4; k++) {
      call.emit('drain');
      await settle();
      expect(call.tokens()).toHaveLength(k);
    }
    expect(call.tokens()).toEqual([1, 2, 3, 0]);
    const last = call.written[call.written.length - 1];
    expect(last.kind?.$case === 'token' && last.kind.value).toMatchObject({ seq: 3, index: 3, last: true });
    expect(engine.calls).toBe(12);
    call.emit('end'); // the client half-closes: the session ends OK
    await session.closed;
    expect(session.isOpen).toBe(false);
  });

  it('stops at once when cancelled while waiting for the client to read', async () => {
    const { call, engine, session } = start();
    await settle();
    expect(call.tokens()).toHaveLength(1);
    call.emit('cancelled');
    await session.closed;
    call.emit('drain');
    await settle();
    expect(call.tokens()).toHaveLength(1);
    expect(engine.calls).toBe(3);
    expect(session.isOpen).toBe(false);
  });

  it('does not idle out a session whose next message was waiting to be read when the event loop was held past the timeout', async () => {
    // A real socket carries the client's message, so it is read in the I/O phase, after timers:
    // as with a gRPC stream whose step arrives while an inline batch holds the event loop.
    const server = createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('no TCP address');
    const accepted = once(server, 'connection') as Promise<[Socket]>;
    const client = createConnection(address.port, '127.0.0.1');
    await once(client, 'connect');
    const [peer] = await accepted;
    try {
      const { call, session } = open(100, new CountingEngine());
      const errors: { code: number; details: string }[] = [];
      call.on('error', (e: { code: number; details: string }) => errors.push(e));
      const step: SessionRequest = {
        kind: {
          $case: 'step',
          value: { seq: '1', stageBegin: 0, stageEnd: 3, input: toWireTensor({ dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(2n) }), sample: true },
        },
      };
      peer.on('data', () => call.emit('data', step));
      await settle();
      const t0 = Date.now();
      client.write('x'); // in the kernel's buffer now
      while (Date.now() - t0 < 250); // the loop is held past the 100 ms idle timeout
      await new Promise((r) => setTimeout(r, 30));
      expect(errors).toEqual([]);
      expect(session.isOpen).toBe(true);
      const answer = call.written[call.written.length - 1];
      expect(answer.kind?.$case === 'result' && answer.kind.value.output).toEqual({ $case: 'token', value: 3 });
      // nothing more from the client: the timeout still ends the session
      await session.closed;
      expect(errors).toEqual([{ code: 4, details: 'session idle for 100 ms' }]);
    } finally {
      client.destroy();
      peer.destroy();
      server.close();
    }
  });

  /** An engine that holds its first call until `release`. */
  function gatedEngine(): { engine: CountingEngine; release: () => void } {
    const engine = new CountingEngine();
    let release!: () => void;
    engine.gate = new Promise<void>((r) => {
      release = r;
    });
    return { engine, release };
  }

  describe('with a clock', () => {
    beforeEach(() => {
      jest.useFakeTimers({ doNotFake: ['setImmediate', 'nextTick', 'queueMicrotask', 'performance'] });
    });
    afterEach(() => {
      jest.useRealTimers();
    });

    it('does not idle out a split session while its step waits or runs', async () => {
      const { engine, release } = gatedEngine();
      const { call, session } = open(1000, engine);
      call.on('error', () => {});
      call.emit('data', {
        kind: {
          $case: 'step',
          value: { seq: 1, stageBegin: 0, stageEnd: 3, input: toWireTensor({ dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(2n) }), sample: true },
        },
      });
      await settle();
      jest.advanceTimersByTime(5000);
      expect(session.isOpen).toBe(true);
      release();
      await settle();
      const answer = call.written[call.written.length - 1];
      expect(answer.kind?.$case === 'result' && answer.kind.value.output).toEqual({ $case: 'token', value: 3 });
      // answered: the client's turn, and the idle timeout runs again
      jest.advanceTimersByTime(1000);
      await session.closed;
    });

    it('idles out a session whose client stopped reading (its stream stayed full), never one the server is decoding, saying so', async () => {
      const { engine, release } = gatedEngine();
      const { call, session } = start(1000, engine);
      const errors: { code: number; details: string }[] = [];
      call.on('error', (e: { code: number; details: string }) => errors.push(e));
      await settle();
      // a step far longer than the idle timeout: the server is decoding, so the session stays
      jest.advanceTimersByTime(5000);
      expect(session.isOpen).toBe(true);
      release();
      await settle();
      // the first token is written, the client does not read: from now on the client is idle
      expect(call.tokens()).toHaveLength(1);
      jest.advanceTimersByTime(999);
      expect(session.isOpen).toBe(true);
      jest.advanceTimersByTime(1);
      await session.closed;
      expect(errors).toEqual([
        { code: 4, details: 'the client read no token for 1000 ms (the server-side generation stalled with its stream full after 1 of 4 tokens)' },
      ]);
      expect(call.tokens()).toHaveLength(1);
    });
  });

  describe('kv_take', () => {
    const prefill: SessionRequest = {
      kind: {
        $case: 'step',
        value: {
          seq: '1',
          stageBegin: 0,
          stageEnd: 3,
          input: toWireTensor({ dtype: 'int64', shape: [1, 3], data: BigInt64Array.of(2n, 1n, 3n) }),
          sample: true,
        },
      },
    };
    const chunks = (call: SlowReaderCall): [number, number, number[], boolean][] =>
      call.written.flatMap((m) =>
        m.kind?.$case === 'kvChunk'
          ? [
              [
                m.kind.value.offset,
                m.kind.value.tokens,
                Array.from(new Float32Array(Uint8Array.from(m.kind.value.key?.data ?? []).buffer)),
                m.kind.value.last,
              ] as [number, number, number[], boolean],
            ]
          : [],
      );

    it('writes one chunk per drain when the client reads slowly, in position order, then the stage holds nothing', async () => {
      const { call, session } = open(60_000, new HandOverEngine());
      call.emit('data', prefill);
      await settle();
      // 8 bytes of key plus value per position (nEmbd 1): one position per chunk.
      call.emit('data', { kind: { $case: 'kvTake', value: { seq: '2', stage: 1, maxChunkBytes: 8 } } });
      await settle();
      expect(chunks(call)).toEqual([[0, 1, [2], false]]);
      call.emit('drain');
      await settle();
      call.emit('drain');
      await settle();
      expect(chunks(call)).toEqual([
        [0, 1, [2], false],
        [1, 1, [1], false],
        [2, 1, [3], true],
      ]);
      // Taken: a second take is refused, naming the field.
      const errors: { code: number; details: string }[] = [];
      call.on('error', (e: { code: number; details: string }) => errors.push({ code: e.code, details: e.details }));
      call.emit('data', { kind: { $case: 'kvTake', value: { seq: '3', stage: 1, maxChunkBytes: 0 } } });
      await session.closed;
      expect(errors).toEqual([
        { code: 9, details: 'kv_take.stage 1 must hold at least one token on the server (it holds none: it ran on the client or was taken), given 1' },
      ]);
    });

    it('idles out a take whose client stopped reading, saying so', async () => {
      jest.useFakeTimers({ doNotFake: ['setImmediate', 'nextTick', 'queueMicrotask', 'performance'] });
      try {
        const { call, session } = open(1000, new HandOverEngine());
        const errors: { code: number; details: string }[] = [];
        call.on('error', (e: { code: number; details: string }) => errors.push(e));
        call.emit('data', prefill);
        await settle();
        call.emit('data', { kind: { $case: 'kvTake', value: { seq: '2', stage: 1, maxChunkBytes: 8 } } });
        await settle();
        jest.advanceTimersByTime(1000);
        await session.closed;
        expect(errors).toEqual([
          { code: 4, details: 'the client read no kv_chunk for 1000 ms (kv_take seq 2 stalled with its stream full after 1 of 3 positions)' },
        ]);
      } finally {
        jest.useRealTimers();
      }
    });

    it('posts a run of takes to the engine together, writes their chunks in message order, and answers a later step after them', async () => {
      const engine = new HandOverEngine();
      const { call } = open(60_000, engine);
      call.write = (m: SessionResponse): boolean => (call.written.push(m), true);
      call.emit('data', prefill);
      await settle();
      let open_ = (): void => {};
      engine.handOverGate = new Promise<void>((r) => (open_ = r));
      call.emit('data', { kind: { $case: 'kvTake', value: { seq: '2', stage: 1, maxChunkBytes: 0 } } });
      call.emit('data', { kind: { $case: 'kvTake', value: { seq: '3', stage: 0, maxChunkBytes: 0 } } });
      // Stage 2 (the head) still holds its positions: a step through it waits for both takes.
      const step: SessionRequest = {
        kind: {
          $case: 'step',
          value: { seq: '4', stageBegin: 2, stageEnd: 3, input: toWireTensor({ dtype: 'float32', shape: [1, 1, 1], data: Float32Array.of(1) }), sample: true },
        },
      };
      call.emit('data', step);
      await settle();
      // Both takes began before either was answered (one wait behind the engine, not two).
      expect(engine.handOvers).toEqual(['take 1', 'take 0']);
      const kindsWritten = (): string[] =>
        call.written.flatMap((m) => (m.kind?.$case === 'kvChunk' ? [`chunk ${m.kind.value.stage}`] : m.kind?.$case === 'result' ? ['result'] : []));
      expect(kindsWritten()).toEqual(['result']);
      open_();
      await settle();
      expect(kindsWritten()).toEqual(['result', 'chunk 1', 'chunk 0', 'result']);
      expect(chunks(call)).toEqual([
        [0, 3, [2, 1, 3], true],
        [0, 3, [], true],
      ]);
    });

    it('refuses a second take of a stage whose first is still in flight, as one of a stage taken', async () => {
      const engine = new HandOverEngine();
      const { call, session } = open(60_000, engine);
      const errors: { code: number; details: string }[] = [];
      call.on('error', (e: { code: number; details: string }) => errors.push({ code: e.code, details: e.details }));
      call.emit('data', prefill);
      await settle();
      engine.handOverGate = new Promise<void>(() => {});
      call.emit('data', { kind: { $case: 'kvTake', value: { seq: '2', stage: 1, maxChunkBytes: 0 } } });
      call.emit('data', { kind: { $case: 'kvTake', value: { seq: '3', stage: 1, maxChunkBytes: 0 } } });
      await session.closed;
      expect(errors).toEqual([
        { code: 9, details: 'kv_take.stage 1 must hold at least one token on the server (it holds none: it ran on the client or was taken), given 1' },
      ]);
      expect(engine.handOvers).toEqual(['take 1']);
    });

    it("gives the executor's KV budget back once when the session closes while a take is in flight", async () => {
      const budget = new KvBudget(1 << 20);
      const engine = new HandOverEngine();
      const { call, session } = open(60_000, engine, budget);
      call.emit('data', prefill);
      await settle();
      const own = budget.usedBytes;
      expect(own).toBeGreaterThan(0);
      budget.reserve(1000, "another session's step");
      let open_ = (): void => {};
      engine.handOverGate = new Promise<void>((r) => (open_ = r));
      call.emit('data', { kind: { $case: 'kvTake', value: { seq: '2', stage: 1, maxChunkBytes: 0 } } });
      await settle();
      call.emit('cancelled');
      await session.closed;
      expect(budget.usedBytes).toBe(1000);
      open_();
      await settle();
      // The take answered after the close frees nothing more: the other session's bytes stay counted.
      expect(budget.usedBytes).toBe(1000);
    });

    it('is refused by an engine that cannot hand state over', async () => {
      const { call, session } = open(60_000, new CountingEngine());
      const errors: { code: number; details: string }[] = [];
      call.on('error', (e: { code: number; details: string }) => errors.push({ code: e.code, details: e.details }));
      call.emit('data', prefill);
      call.emit('data', { kind: { $case: 'kvTake', value: { seq: '2', stage: 1, maxChunkBytes: 0 } } });
      await session.closed;
      expect(errors).toEqual([{ code: 9, details: "kv_take is not supported by this executor's engine, given kv_take of stage 1" }]);
    });
  });
  describe('kv_put', () => {
    it('puts a run of stages into the engine together when the next message comes, then runs it on what was put', async () => {
      const engine = new HandOverEngine();
      const { call } = open(60_000, engine);
      call.write = (m: SessionResponse): boolean => (call.written.push(m), true);
      let open_ = (): void => {};
      engine.handOverGate = new Promise<void>((r) => (open_ = r));
      const ids = toWireTensor({ dtype: 'float32', shape: [1, 1, 2, 1], data: Float32Array.of(2, 1) });
      call.emit('data', { kind: { $case: 'kvPut', value: { stage: 0, offset: 0, tokens: 2 } } });
      call.emit('data', { kind: { $case: 'kvPut', value: { stage: 1, offset: 0, tokens: 1, key: sliceIds(ids, 0), value: sliceIds(ids, 0) } } });
      call.emit('data', { kind: { $case: 'kvPut', value: { stage: 1, offset: 1, tokens: 1, key: sliceIds(ids, 1), value: sliceIds(ids, 1) } } });
      call.emit('data', { kind: { $case: 'kvPut', value: { stage: 2, offset: 0, tokens: 2 } } });
      await settle();
      // Held until another message comes.
      expect(engine.handOvers).toEqual([]);
      call.emit('data', {
        kind: { $case: 'generate', value: { seq: 1, input: toWireTensor({ dtype: 'int64', shape: [1, 1], data: BigInt64Array.of(3n) }), maxNewTokens: 2 } },
      });
      await settle();
      // Every stage's put began before any was answered (one wait behind the engine, not three).
      expect(engine.handOvers).toEqual(['put 0', 'put 1', 'put 2']);
      expect(call.tokens()).toEqual([]);
      open_();
      await settle();
      // The decode continues from the put positions: (3 + 1) mod 4, then (0 + 1).
      expect(call.tokens()).toEqual([0, 1]);
    });
  });
});
