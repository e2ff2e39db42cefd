/**
 * The inference thread of {@link WorkerStageEngine}: owns an {@link OnnxStageEngine} and every
 * KV cache, and answers the requests of worker-engine.ts one at a time, in arrival order.
 * Loaded through engine-thread.js (which registers the TypeScript loader first); it is not
 * imported by anything else.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { StageInputError, type KvCache } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import { OnnxStageEngine, type SessionCache } from './engine';
import { watchGc } from './gc-watch';
import { collectWhenQuiet } from './worker-engine';
import { describeError, transferListOf, type EngineThreadData, type FromThread, type ToThread } from './engine-thread-protocol';

async function serve(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('engine-thread must run as a worker thread');
  const init = workerData as EngineThreadData;
  let engine: OnnxStageEngine;
  try {
    engine = await OnnxStageEngine.load(init.modelDir, init);
  } catch (err) {
    port.postMessage({ type: 'load-failed', error: describeError(err) } satisfies FromThread);
    return;
  }
  const caches = new Map<number, SessionCache<KvCache>>();
  // KV buffers are ArrayBuffers whose memory only the collector frees: with returnMemory,
  // collect once a burst is over (after it, never inside one): when no cache has been live for
  // a moment, or the live caches fell to a quarter of their high-water mark since the last
  // collection (a burst ended while a few sessions stay open).
  let high = 0;
  const burstOver = (): boolean => caches.size === 0 || (high >= 8 && caches.size <= high / 4);
  const collectWhenIdle = init.returnMemory
    ? collectWhenQuiet(burstOver, () => {
        high = caches.size;
      })
    : () => {};
  const post = (m: FromThread, transfer: ArrayBuffer[] = []): void => {
    try {
      port.postMessage(m, transfer);
    } catch (err) {
      // A buffer onnxruntime does not let go of cannot be transferred: send a copy instead.
      if (!(err instanceof Error && err.name === 'DataCloneError') || transfer.length === 0) throw err;
      port.postMessage(m);
    }
  };

  /** The live cache `id` names. @throws StageInputError naming `field` when there is none. */
  const live = (id: number, field: string): SessionCache<KvCache> => {
    const c = caches.get(id);
    if (c === undefined) throw new StageInputError(field, 'be a live cache of this engine (made by newCache, not released)', `cache ${id}`, 'precondition');
    return c;
  };
  /** Answers request `id` with what `run` gives, or its error and the inputs (so the caller can retry them one by one). */
  const answer = async (id: number, inputs: readonly HostTensor[], run: () => Promise<HostTensor[]>): Promise<void> => {
    let outputs: HostTensor[];
    try {
      outputs = await run();
    } catch (err) {
      post({ type: 'failed', id, error: describeError(err), inputs }, transferListOf(inputs));
      return;
    }
    post({ type: 'done', id, outputs }, transferListOf(outputs));
  };

  const handle = async (m: ToThread): Promise<void> => {
    switch (m.op) {
      case 'crash':
        process.exit(1);
        return;
      case 'new-cache':
        caches.set(m.cache, engine.newCache());
        high = Math.max(high, caches.size);
        return;
      case 'release-cache': {
        const c = caches.get(m.cache);
        caches.delete(m.cache);
        if (c !== undefined) engine.releaseCache(c);
        collectWhenIdle();
        return;
      }
      case 'run':
        return answer(m.id, m.inputs, () =>
          engine.runBatch(
            m.stage,
            m.inputs,
            m.caches.map((id, i) => live(id, `caches[${i}]`)),
            m.sample,
          ),
        );
      case 'run-range':
        return answer(m.id, [m.input], async () => [await engine.runRange(m.begin, m.end, m.input, live(m.cache, 'cache'), m.lastRowOnly, m.sample)]);
      case 'run-steps':
        return answer(m.id, m.inputs, () =>
          engine.runSteps(
            m.begin,
            m.end,
            m.inputs,
            m.caches.map((id, i) => live(id, `caches[${i}]`)),
            m.sample,
          ),
        );
      case 'put-state':
        return answer(m.id, m.inputs, async () => {
          const [key, value] = m.inputs;
          const kv = key?.dtype === 'float32' && value?.dtype === 'float32' ? { key, value } : undefined;
          await engine.putState(m.stage, live(m.cache, 'cache'), m.tokens, kv);
          return [];
        });
      case 'take-state':
        return answer(m.id, [], async () => {
          const kv = await engine.takeState(m.stage, live(m.cache, 'cache'));
          return kv ? [kv.key, kv.value] : [];
        });
      case 'warmup':
        return answer(m.id, [], async () => {
          await engine.warmup();
          return [];
        });
      case 'close':
        await answer(m.id, [], async () => {
          for (const c of caches.values()) engine.releaseCache(c);
          caches.clear();
          await engine.close();
          return [];
        });
        port.close();
        return;
    }
  };

  // Its collections pause every call in flight: the event-loop thread counts them (metrics).
  watchGc((kind, ms) => post({ type: 'gc', kind, ms }));

  // One request at a time, in order: a release queued behind a run never frees a cache in use.
  let chain = Promise.resolve();
  port.on('message', (m: ToThread) => {
    chain = chain.then(() => handle(m));
  });
  post({ type: 'ready' });
}

void serve();
