/**
 * KV hand-over CPU benchmark: what taking a KV cache in (kv_put, a device prefill before a
 * server decode) and sending one out (kv_take, a server prefill before a device decode) costs
 * the executor's CPU per KiB, against what its overhead fit (ServerLoad.overhead,
 * ms_per_kib_in / ms_per_kib_out, which the planner prices hand-overs with) says.
 *
 * The executor runs in a child process (the worker engine, as deployed) so its CPU is its own:
 * per thread from /proc/<pid>/task/<tid>/stat, split into the main (event-loop) thread, which
 * is all the overhead fit sees, and the other threads (the engine's worker and onnxruntime's).
 * Each session is new, so every cache lands in fresh memory (first-touch page faults included),
 * as in a load test. Idle CPU over the same wall time is measured first and taken out.
 *
 * Then whole generations, as a load test runs them: a server-side generation of a prompt of
 * `--gen-prompt` tokens and `--gen-new` new ones (one generate), against the same generation
 * handed over (the prompt's cache put, then a generate of the last token continuing from it:
 * a device prefill before a server decode), alternating, to compare what the hand-over saves
 * the server (the prompt's prefill) with what it costs (taking the cache in).
 *
 * Last, the wall time of a hand-over as a client sees it, on an idle engine and behind `--busy`
 * clients that keep server-side generations of `--busy-prompt`-token prompts running (the
 * engine never idle, long prefill calls among the decode steps, as at saturation):
 * "in" from the first kv_put of a `--gen-prompt`-token cache until the server's first decoded
 * token, "out" from the kv_takes of every attention stage (sent together, as the agent does)
 * until the last chunk. `--handovers` of each, p50 and p90.
 *
 *   npx tsx tools/bench/kv-handover-bench.ts [--preset small] [--tokens 512] [--sessions 30] [--chunk 1048576] [--gen-prompt 24] [--gen-new 16] [--generations 60] [--busy 4] [--busy-prompt 256] [--handovers 40]
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { channelOptions, ExecutorServiceClient, toWireTensor, type ServerLoad, type SessionResponse } from '@tandem/protocol';
import { WorkerStageEngine } from '@tandem/server-executor';
import { arg, benchModel, idsTensor, openSession, quantile, startBenchExecutor, stepRequest } from './bench-kit';

const preset = arg('preset', 'small');
const tokens = Number(arg('tokens', '512'));
const sessions = Number(arg('sessions', '30'));
const chunkBytes = Number(arg('chunk', String(1 << 20)));
const genPrompt = Number(arg('gen-prompt', '24'));
const genNew = Number(arg('gen-new', '16'));
const generations = Number(arg('generations', '60'));
const busy = Number(arg('busy', '4'));
const handovers = Number(arg('handovers', '40'));
const busyPrompt = Number(arg('busy-prompt', '256'));
const MAX_MESSAGE = 64 << 20;
const CLK_TCK = 100;

/** CPU ms of `pid`'s threads, main thread apart. */
function cpu(pid: number): { main: number; other: number } {
  let main = 0;
  let other = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // a thread that ended meanwhile
    }
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ms = ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
    if (Number(tid) === pid) main += ms;
    else other += ms;
  }
  return { main, other };
}

/** Child mode: an executor on the worker engine, its load read each second (the fit's intervals); the last report on request. */
async function serve(): Promise<void> {
  const dir = await benchModel(preset);
  const engine = await WorkerStageEngine.load(dir, { intraOpNumThreads: 1 });
  const ex = await startBenchExecutor(engine, { maxMessageBytes: MAX_MESSAGE, maxSessions: 16 });
  const read = ex.server.loadReader();
  let last: ServerLoad = read();
  const timer = setInterval(() => (last = read()), 1000);
  process.on('message', (m: string) => {
    if (m === 'load') process.send?.({ load: last });
    if (m === 'stop') {
      clearInterval(timer);
      void ex.stop().then(() => process.exit(0));
    }
  });
  const attention = Array.from({ length: engine.stageCount }, (_, i) => i).filter((i) => engine.stageKind(i) === 'attn');
  process.send?.({ addr: ex.addr, stageCount: engine.stageCount, nEmbd: engine.nEmbd, nHead: engine.nHead, attention });
}

const send = (child: ChildProcess, m: string): void => void child.send(m);
const until = <T>(child: ChildProcess, key: string): Promise<T> =>
  new Promise((resolve) => {
    const on = (m: Record<string, unknown>): void => {
      if (key in m) {
        child.off('message', on);
        resolve(m as T);
      }
    };
    child.on('message', on);
  });

/** Float32 keys or values [1, heads, n, headDim] of arbitrary content. */
function kvTensor(heads: number, n: number, headDim: number): ReturnType<typeof toWireTensor> {
  const data = new Float32Array(heads * n * headDim);
  for (let i = 0; i < data.length; i++) data[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
  return toWireTensor({ dtype: 'float32', shape: [1, heads, n, headDim], data });
}

async function main(): Promise<void> {
  if (process.argv.includes('--serve')) return serve();
  const child = fork(__filename, [...process.argv.slice(2), '--serve'], { execArgv: process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const pid = child.pid;
  if (pid === undefined) throw new Error('the executor process did not start');
  const info = await until<{ addr: string; stageCount: number; nEmbd: number; nHead: number; attention: number[] }>(child, 'addr');
  const client = new ExecutorServiceClient(info.addr, grpc.credentials.createInsecure(), channelOptions(MAX_MESSAGE));
  const S = info.stageCount;
  const attention = new Set(info.attention);
  const heads = info.nHead;
  const headDim = info.nEmbd / heads;
  const kvBytesPerToken = 2 * info.nEmbd * 4;
  const perChunk = Math.max(1, Math.floor(chunkBytes / kvBytesPerToken));
  const kvKib = (attention.size * kvBytesPerToken * tokens) / 1024;

  // Idle CPU rate (timers, telemetry reads), per ms of wall time.
  const i0 = cpu(pid);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, 3000));
  const i1 = cpu(pid);
  const idleWall = performance.now() - t0;
  const idle = { main: (i1.main - i0.main) / idleWall, other: (i1.other - i0.other) / idleWall };

  // The tensors of one stage's chunks, made once (the client's work is not measured).
  const chunks: { offset: number; n: number; key: ReturnType<typeof toWireTensor>; value: ReturnType<typeof toWireTensor> }[] = [];
  for (let offset = 0; offset < tokens; offset += perChunk) {
    const n = Math.min(perChunk, tokens - offset);
    chunks.push({ offset, n, key: kvTensor(heads, n, headDim), value: kvTensor(heads, n, headDim) });
  }

  type Phase = { main: number; other: number; wall: number; messages: number };
  const put: Phase = { main: 0, other: 0, wall: 0, messages: 0 };
  // One decode step alone (the same session's next), taken out of `put`, which ends with one.
  const step: Phase = { main: 0, other: 0, wall: 0, messages: 0 };
  // The same step in a session the server prefilled itself (nothing put): what a step costs without a hand-over.
  const plainStep: Phase = { main: 0, other: 0, wall: 0, messages: 0 };
  const take: Phase = { main: 0, other: 0, wall: 0, messages: 0 };
  const measure = async (into: Phase, work: () => Promise<void>): Promise<void> => {
    const a = cpu(pid);
    const w = performance.now();
    await work();
    const b = cpu(pid);
    into.wall += performance.now() - w;
    into.main += b.main - a.main;
    into.other += b.other - a.other;
  };
  const ids = Array.from({ length: tokens }, (_, i) => 100 + (i % 5000));
  for (let r = 0; r < sessions; r++) {
    // In: every stage's state put (positions only for the stages without a cache), then one
    // decode step through the whole model, whose answer says every put was taken.
    {
      const { call, next } = await openSession(client);
      await measure(put, async () => {
        for (let s = 0; s < S; s++) {
          for (const c of attention.has(s) ? chunks : [{ offset: 0, n: tokens }]) {
            const kv = 'key' in c ? { key: c.key, value: c.value } : { key: undefined, value: undefined };
            call.write({ kind: { $case: 'kvPut', value: { stage: s, offset: c.offset, tokens: c.n, ...kv } } });
            if (attention.has(s)) put.messages++;
          }
        }
        call.write(stepRequest(1, S, [42], true));
        const m: SessionResponse = await next();
        if (m.kind?.$case !== 'result') throw new Error(`expected the step's result, got ${m.kind?.$case}`);
      });
      await measure(step, async () => {
        call.write(stepRequest(2, S, [43], true));
        const m: SessionResponse = await next();
        if (m.kind?.$case !== 'result') throw new Error(`expected the step's result, got ${m.kind?.$case}`);
      });
      call.end();
    }
    // Out: a server prefill (not measured), then every attention stage's state taken.
    {
      const { call, next } = await openSession(client);
      call.write(stepRequest(1, S, ids, true));
      const first = await next();
      if (first.kind?.$case !== 'result') throw new Error(`expected the prefill's result, got ${first.kind?.$case}`);
      await measure(plainStep, async () => {
        call.write(stepRequest(2, S, [43], true));
        const m: SessionResponse = await next();
        if (m.kind?.$case !== 'result') throw new Error(`expected the step's result, got ${m.kind?.$case}`);
      });
      await measure(take, async () => {
        let seq = 3;
        for (const s of attention) {
          call.write({ kind: { $case: 'kvTake', value: { seq: String(seq++), stage: s, maxChunkBytes: chunkBytes } } });
          for (;;) {
            const m = await next();
            if (m.kind?.$case !== 'kvChunk') throw new Error(`expected a kv_chunk, got ${m.kind?.$case}`);
            take.messages++;
            if (m.kind.value.last) break;
          }
        }
      });
      call.end();
    }
  }
  // Whole generations: all on the server, and handed over after a device prefill, alternating.
  const whole: Phase = { main: 0, other: 0, wall: 0, messages: 0 };
  const handed: Phase = { main: 0, other: 0, wall: 0, messages: 0 };
  const genIds = Array.from({ length: genPrompt }, (_, i) => 100 + ((i * 37) % 5000));
  const genChunks = [{ offset: 0, n: genPrompt, key: kvTensor(heads, genPrompt, headDim), value: kvTensor(heads, genPrompt, headDim) }];
  const tokensOf = async (next: () => Promise<SessionResponse>, count: number): Promise<void> => {
    for (let got = 0; got < count;) {
      const m = await next();
      if (m.kind?.$case !== 'token') throw new Error(`expected a token, got ${m.kind?.$case}`);
      got++;
    }
  };
  /** A device prefill handed over: every stage's state of the `genPrompt`-token prompt put, then a generate of `maxNewTokens` from its first token. */
  const handOver = (call: Awaited<ReturnType<typeof openSession>>['call'], maxNewTokens: number): void => {
    for (let s = 0; s < S; s++) {
      const kv = attention.has(s) ? { key: genChunks[0].key, value: genChunks[0].value } : { key: undefined, value: undefined };
      call.write({ kind: { $case: 'kvPut', value: { stage: s, offset: 0, tokens: genPrompt, ...kv } } });
    }
    // The device's prefill made the first token; the server decodes the rest from it.
    call.write({ kind: { $case: 'generate', value: { seq: '1', input: idsTensor([42]), maxNewTokens } } });
  };
  for (let g = 0; g < generations; g++) {
    {
      const { call, next } = await openSession(client);
      await measure(whole, async () => {
        call.write({ kind: { $case: 'generate', value: { seq: '1', input: idsTensor(genIds), maxNewTokens: genNew } } });
        await tokensOf(next, genNew);
      });
      call.end();
    }
    {
      const { call, next } = await openSession(client);
      await measure(handed, async () => {
        handOver(call, genNew - 1);
        await tokensOf(next, genNew - 1);
      });
      call.end();
    }
  }

  // Hand-over wall time, idle and behind busy clients.
  const handOverIn = async (): Promise<number> => {
    const { call, next } = await openSession(client);
    const t0 = performance.now();
    handOver(call, 1);
    await tokensOf(next, 1);
    const ms = performance.now() - t0;
    call.end();
    return ms;
  };
  const handOverOut = async (): Promise<number> => {
    const { call, next } = await openSession(client);
    call.write(stepRequest(1, S, genIds, true));
    const first = await next();
    if (first.kind?.$case !== 'result') throw new Error(`expected the prefill's result, got ${first.kind?.$case}`);
    const t0 = performance.now();
    let seq = 2;
    for (const s of attention) call.write({ kind: { $case: 'kvTake', value: { seq: String(seq++), stage: s, maxChunkBytes: chunkBytes } } });
    for (let done = 0; done < attention.size;) {
      const m = await next();
      if (m.kind?.$case !== 'kvChunk') throw new Error(`expected a kv_chunk, got ${m.kind?.$case}`);
      if (m.kind.value.last) done++;
    }
    const ms = performance.now() - t0;
    call.end();
    return ms;
  };
  const walls = async (): Promise<{ in: number[]; out: number[] }> => {
    const w = { in: [] as number[], out: [] as number[] };
    for (let h = 0; h < handovers; h++) {
      w.in.push(await handOverIn());
      w.out.push(await handOverOut());
    }
    return w;
  };
  const idleWalls = await walls();
  let stopBusy = false;
  const busyIds = Array.from({ length: busyPrompt }, (_, i) => 100 + ((i * 53) % 5000));
  const busyLoops = Array.from({ length: busy }, async () => {
    while (!stopBusy) {
      const { call, next } = await openSession(client);
      call.write({ kind: { $case: 'generate', value: { seq: '1', input: idsTensor(busyIds), maxNewTokens: genNew } } });
      await tokensOf(next, genNew);
      call.end();
    }
  });
  await new Promise((r) => setTimeout(r, 500));
  const busyWalls = await walls();
  stopBusy = true;
  await Promise.all(busyLoops);
  const wallRow = (name: string, w: { in: number[]; out: number[] }): string =>
    `hand-over wall, ${name}: in (put ${attention.size} stages of ${genPrompt} positions until the first token) p50 ${quantile(w.in, 0.5).toFixed(1)} ms p90 ${quantile(w.in, 0.9).toFixed(1)} ms;` +
    ` out (take ${attention.size} stages) p50 ${quantile(w.out, 0.5).toFixed(1)} ms p90 ${quantile(w.out, 0.9).toFixed(1)} ms`;

  send(child, 'load');
  const { load } = await until<{ load: ServerLoad }>(child, 'load');
  send(child, 'stop');
  client.close();

  const raw = (p: Phase, k: 'main' | 'other'): number => p[k] - idle[k] * p.wall;
  const net = (p: Phase, k: 'main' | 'other'): number => Math.max(0, raw(p, k) - (p === put ? raw(step, k) : 0));
  const total = sessions * kvKib;
  const row = (name: string, p: Phase): string =>
    `${name.padEnd(5)} ${(p.messages / sessions).toFixed(0).padStart(4)} msgs/req  main ${((net(p, 'main') / total) * 1000).toFixed(2).padStart(6)} µs/KiB` +
    `  other threads ${((net(p, 'other') / total) * 1000).toFixed(2).padStart(6)} µs/KiB  all ${(((net(p, 'main') + net(p, 'other')) / total) * 1000).toFixed(2).padStart(6)} µs/KiB` +
    `  (${((net(p, 'main') + net(p, 'other')) / sessions).toFixed(1)} ms CPU per hand-over of ${(kvKib / 1024).toFixed(2)} MiB)`;
  const genCpu = (p: Phase): number => (raw(p, 'main') + raw(p, 'other')) / generations;
  const genRow = (): string =>
    `generation of ${genPrompt} prompt tokens and ${genNew} new, ${generations} each way: all on the server ${genCpu(whole).toFixed(1)} ms CPU` +
    ` (main ${(raw(whole, 'main') / generations).toFixed(1)}), handed over after a device prefill ${genCpu(handed).toFixed(1)} ms CPU` +
    ` (main ${(raw(handed, 'main') / generations).toFixed(1)}; ${((attention.size * kvBytesPerToken * genPrompt) / 1024).toFixed(0)} KiB put):` +
    ` handed / all-server ${(genCpu(handed) / genCpu(whole)).toFixed(3)}`;
  const o = load.overhead;
  const us = (ms: number | undefined): string => (ms === undefined ? 'not reported' : `${(ms * 1000).toFixed(2)} µs/KiB`);
  process.stdout.write(
    [
      `${preset}, ${tokens} tokens, ${attention.size} attention stages (${(kvKib / 1024).toFixed(2)} MiB per hand-over), ${sessions} sessions each way, chunks of ${perChunk} positions`,
      `idle CPU: main ${(idle.main * 1000).toFixed(2)} ms/s, other ${(idle.other * 1000).toFixed(2)} ms/s (taken out); a decode step after the put (taken out of "in"): ${((raw(step, 'main') + raw(step, 'other')) / sessions).toFixed(1)} ms CPU, after a server prefill: ${((raw(plainStep, 'main') + raw(plainStep, 'other')) / sessions).toFixed(1)} ms CPU`,
      row('in', put),
      row('out', take),
      o
        ? `executor's fit (${o.samples} intervals): ms_per_kv_kib_in ${us(o.msPerKvKibIn)}, ms_per_kv_kib_out ${us(o.msPerKvKibOut)}, ms_per_kib_in ${us(o.msPerKibIn)}, ms_per_kib_out ${us(o.msPerKibOut)}, ms_per_message_in ${o.msPerMessageIn.toFixed(3)}, ms_per_message_out ${o.msPerMessageOut.toFixed(3)}`
        : "executor's fit: none reported",
      `mean wall per hand-over: in ${(put.wall / sessions).toFixed(1)} ms, out ${(take.wall / sessions).toFixed(1)} ms`,
      genRow(),
      wallRow(`idle engine, ${handovers} each`, idleWalls),
      wallRow(`behind ${busy} clients generating on the server from ${busyPrompt}-token prompts, ${handovers} each`, busyWalls),
    ].join('\n') + '\n',
  );
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
