/**
 * Tensor transport benchmark: how close the project's message path comes to raw grpc-js.
 * One gRPC server on 127.0.0.1 (port 0) and its clients in this process, one bidi stream per
 * variant, ping-pong (one message in flight, as a session's steps are), the same payload each way:
 *
 * - `raw`: a service whose serializers are the identity on Buffers (grpc-js framing only).
 * - `project`: the executor's `Session` stream as the services run it: `toWireTensor` →
 *   `SessionRequest` through `ExecutorServiceService`'s serializer → server `fromWireTensor` →
 *   `toWireTensor` → `SessionResponse` → client `fromWireTensor`.
 * - `generated` (the path before this benchmark's fixes, for comparison): the same messages
 *   through ts-proto's own serializers (`Buffer.from(X.encode(v).finish())`) and a
 *   `fromWireTensor` that copies.
 *
 * Repetitions rotate the order of the variants; throughput counts payload bytes both ways.
 *
 *   npx tsx tools/bench/tensor-bench.ts [--sizes 262144,3145728] [--reps 5] [--mb 64] [--json-out FILE]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  channelOptions,
  ExecutorServiceService,
  fromWireTensor,
  SessionRequest,
  SessionResponse,
  toWireTensor,
  type ExecutorServiceServer,
  type HostTensor,
} from '@tandem/protocol';

const arg = (k: string, d: string): string => { const i = process.argv.indexOf(`--${k}`); return i >= 0 ? process.argv[i + 1] : d; };
const sizes = arg('sizes', `${256 << 10},${3 << 20}`).split(',').map(Number);
const reps = Number(arg('reps', '5'));
const mbPerRep = Number(arg('mb', '64'));
const jsonOut = arg('json-out', path.join(os.tmpdir(), 'tandem-bench', 'tensor-bench.json'));
const MAX = 64 << 20;

const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const identity = (b: Buffer): Buffer => b;

type Variant = 'raw' | 'project' | 'generated';
const VARIANTS: Variant[] = ['raw', 'project', 'generated'];

const RAW_SERVICE = {
  echo: { path: '/bench.Raw/Echo', requestStream: true, responseStream: true, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
} satisfies grpc.ServiceDefinition;

/** ts-proto's own serializers, as the generated service definition has them. */
const GENERATED_SERVICE: typeof ExecutorServiceService = {
  ...ExecutorServiceService,
  session: {
    ...ExecutorServiceService.session,
    requestSerialize: (v: SessionRequest): Buffer => Buffer.from(SessionRequest.encode(v).finish()),
    responseSerialize: (v: SessionResponse): Buffer => Buffer.from(SessionResponse.encode(v).finish()),
  },
};

/** fromWireTensor as it was: always into fresh memory. */
const copyingFromWire = (t: Parameters<typeof fromWireTensor>[0], f: string): HostTensor => {
  const h = fromWireTensor(t, f);
  return h.dtype === 'float32' ? { ...h, data: h.data.slice() } : { ...h, data: h.data.slice() };
};

/** A session echo: decode the step's tensor as the executor does, send it back as its result. */
function echoServer(fromWire: typeof fromWireTensor): ExecutorServiceServer {
  return {
    session(call) {
      call.on('data', (req: SessionRequest) => {
        if (req.kind?.$case !== 'step') return;
        const host = fromWire(req.kind.value.input, 'step.input');
        call.write({ kind: { $case: 'result', value: { seq: req.kind.value.seq, output: { $case: 'tensor', value: toWireTensor(host) }, computeMs: 0, queueMs: 0 } } });
      });
      call.on('end', () => call.end());
    },
    getStatus(_c, cb) { cb({ code: grpc.status.UNIMPLEMENTED }); },
  };
}

interface Clients { raw: grpc.Client; project: grpc.Client; generated: grpc.Client }

/** `count` ping-pongs of `bytes` each way; returns MB/s of payload (both directions). */
async function run(variant: Variant, clients: Clients, bytes: number, count: number): Promise<number> {
  const host: HostTensor = { dtype: 'float32', shape: [1, bytes / 4], data: Float32Array.from({ length: bytes / 4 }, (_, i) => Math.sin(i)) };
  const rawPayload = Buffer.from(host.data.buffer);
  const fromWire = variant === 'project' ? fromWireTensor : copyingFromWire;
  return new Promise((resolve, reject) => {
    const def = variant === 'generated' ? GENERATED_SERVICE.session : ExecutorServiceService.session;
    // Both streams take writes and emit messages; their element types differ by variant.
    const call = (variant === 'raw'
      ? clients.raw.makeBidiStreamRequest(RAW_SERVICE.echo.path, identity, identity)
      : clients[variant].makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize)) as unknown as grpc.ClientDuplexStream<unknown, unknown>;
    let done = 0;
    const t0 = performance.now();
    const send = (): void => {
      if (variant === 'raw') call.write(rawPayload);
      else call.write({ kind: { $case: 'step', value: { seq: done + 1, stageBegin: 1, stageEnd: 2, input: toWireTensor(host), sample: false } } });
    };
    call.on('data', (m: unknown) => {
      if (variant === 'raw') {
        if ((m as Buffer).length !== bytes) reject(new Error('short echo'));
      } else {
        const r = (m as SessionResponse).kind;
        if (r?.$case !== 'result' || r.value.output?.$case !== 'tensor') { reject(new Error('not a tensor result')); return; }
        const back = fromWire(r.value.output.value, 'result.tensor');
        if (back.data.length !== host.data.length) reject(new Error('short echo'));
      }
      if (++done === count) { call.end(); resolve((2 * bytes * count) / ((performance.now() - t0) / 1000) / 1e6); } else send();
    });
    call.on('error', reject);
    send();
  });
}

async function main(): Promise<void> {
  const server = new grpc.Server(channelOptions(MAX));
  server.addService(RAW_SERVICE, { echo: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => { call.on('data', (b: Buffer) => call.write(b)); call.on('end', () => call.end()); } });
  server.addService(ExecutorServiceService, echoServer(fromWireTensor));
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  // The generated variant needs its own server too: a server has one definition per path.
  const genServer = new grpc.Server(channelOptions(MAX));
  genServer.addService(GENERATED_SERVICE, echoServer(copyingFromWire));
  const genPort = await new Promise<number>((res, rej) => genServer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  const creds = grpc.credentials.createInsecure();
  const Ctor = grpc.makeGenericClientConstructor({}, 'bench');
  const clients: Clients = {
    raw: new Ctor(`127.0.0.1:${port}`, creds, channelOptions(MAX)),
    project: new Ctor(`127.0.0.1:${port}`, creds, channelOptions(MAX)),
    generated: new Ctor(`127.0.0.1:${genPort}`, creds, channelOptions(MAX)),
  };
  const results: Record<string, unknown>[] = [];
  for (const bytes of sizes) {
    if (bytes % 4 !== 0) throw new Error(`--sizes: each size must be a multiple of 4 bytes, given ${bytes}`);
    const count = Math.max(4, Math.round((mbPerRep * 1e6) / (2 * bytes)));
    for (const v of VARIANTS) await run(v, clients, bytes, Math.max(2, count >> 3)); // warm-up
    const mbps: Record<Variant, number[]> = { raw: [], project: [], generated: [] };
    for (let r = 0; r < reps; r++) {
      const order = VARIANTS.map((_, i) => VARIANTS[(i + r) % VARIANTS.length]);
      for (const v of order) mbps[v].push(await run(v, clients, bytes, count));
      process.stderr.write(`${bytes} B rep ${r + 1}/${reps}: ${VARIANTS.map((v) => `${v} ${mbps[v][r].toFixed(0)}`).join(', ')} MB/s\n`);
    }
    const ratios = (v: Variant): number[] => mbps[v].map((x, i) => x / mbps.raw[i]);
    results.push({
      bytes, messagesPerRep: count,
      ...Object.fromEntries(VARIANTS.map((v) => [v, { medianMBps: median(mbps[v]), minMBps: Math.min(...mbps[v]), maxMBps: Math.max(...mbps[v]) }])),
      projectVsRaw: { median: median(ratios('project')), min: Math.min(...ratios('project')), max: Math.max(...ratios('project')) },
      generatedVsRaw: { median: median(ratios('generated')), min: Math.min(...ratios('generated')), max: Math.max(...ratios('generated')) },
    });
  }
  for (const c of Object.values(clients)) c.close();
  await Promise.all([server, genServer].map((s) => new Promise<void>((res) => s.tryShutdown(() => res()))));
  const f = (x: number, d = 0): string => x.toFixed(d);
  const lines = ['payload     raw MB/s            project MB/s        generated MB/s      project/raw (min-max)   generated/raw (min-max)'];
  for (const r of results as any[]) {
    const cell = (v: Variant): string => `${f(r[v].medianMBps)} (${f(r[v].minMBps)}-${f(r[v].maxMBps)})`.padEnd(20);
    lines.push(`${`${f(r.bytes / 1024)} KiB`.padEnd(12)}${cell('raw')}${cell('project')}${cell('generated')}${`${f(r.projectVsRaw.median, 3)} (${f(r.projectVsRaw.min, 2)}-${f(r.projectVsRaw.max, 2)})`.padEnd(24)}${f(r.generatedVsRaw.median, 3)} (${f(r.generatedVsRaw.min, 2)}-${f(r.generatedVsRaw.max, 2)})`);
  }
  const env = { node: process.version, cpus: os.cpus().length, loadavg: os.loadavg().map((x) => Number(x.toFixed(2))), reps, mbPerRep, pattern: 'ping-pong, one bidi stream per variant, client and server in one process' };
  process.stdout.write(`${lines.join('\n')}\n\nenv: ${JSON.stringify(env)}\n`);
  mkdirSync(path.dirname(jsonOut), { recursive: true });
  writeFileSync(jsonOut, `${JSON.stringify({ env, results }, null, 2)}\n`);
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack ?? String(err)}\n`); process.exitCode = 1; });
