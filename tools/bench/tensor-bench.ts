/**
 * Tensor transport benchmark: how close the project's message path comes to raw grpc-js.
 * One gRPC server on 127.0.0.1 (port 0) and its clients in this process, one bidi stream per
 * variant, ping-pong (one message in flight, as a session's steps are), the same payload each way:
 *
 * - `raw`: a service whose serializers are the identity on Buffers (grpc-js framing only).
 * - `project`: the executor's `Session` stream as the services run it: `toWireTensor` →
 *   `SessionRequest` through `ExecutorServiceService`'s serializer → server `fromWireTensor` →
 *   `toWireTensor` → `SessionResponse` → client `fromWireTensor`.
 * - `generated` (the path before the wire-codec changes, for comparison): the same messages
 *   through ts-proto's own serializers (`Buffer.from(X.encode(v).finish())`) and deserializers
 *   and a `fromWireTensor` that copies.
 *
 * Besides MB/s, each variant's process CPU time per MB is measured; on a shared machine the CPU
 * ratio is the steadier figure (the throughput a CPU-bound run would reach).
 *
 * Repetitions rotate the order of the variants; throughput counts payload bytes both ways.
 *
 *   npx tsx tools/bench/tensor-bench.ts [--sizes 262144,3145728] [--reps 5] [--mb 64]
 *        [--variants raw,project,generated] [--json-out FILE]
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
import { median } from '@tandem/util';

const arg = (k: string, d: string): string => {
  const i = process.argv.indexOf(`--${k}`);
  return i >= 0 ? process.argv[i + 1] : d;
};
const sizes = arg('sizes', `${256 << 10},${3 << 20}`)
  .split(',')
  .map(Number);
const reps = Number(arg('reps', '5'));
const mbPerRep = Number(arg('mb', '64'));
const jsonOut = arg('json-out', path.join(os.tmpdir(), 'tandem-bench', 'tensor-bench.json'));
const MAX = 64 << 20;

const identity = (b: Buffer): Buffer => b;

type Variant = 'raw' | 'project' | 'generated';
const VARIANTS = arg('variants', 'raw,project,generated').split(',') as Variant[];
for (const v of VARIANTS) if (!['raw', 'project', 'generated'].includes(v)) throw new Error(`--variants: each must be raw, project or generated, given ${v}`);

const RAW_SERVICE = {
  echo: {
    path: '/bench.Raw/Echo',
    requestStream: true,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
} satisfies grpc.ServiceDefinition;

/** ts-proto's own (de)serializers, as the generated service definition has them. */
const GENERATED_SERVICE: typeof ExecutorServiceService = {
  ...ExecutorServiceService,
  session: {
    ...ExecutorServiceService.session,
    requestSerialize: (v: SessionRequest): Buffer => Buffer.from(SessionRequest.encode(v).finish()),
    requestDeserialize: (b: Buffer): SessionRequest => SessionRequest.decode(b),
    responseSerialize: (v: SessionResponse): Buffer => Buffer.from(SessionResponse.encode(v).finish()),
    responseDeserialize: (b: Buffer): SessionResponse => SessionResponse.decode(b),
  },
};

/** fromWireTensor as it was: always into fresh memory. */
const copyingFromWire = (t: Parameters<typeof fromWireTensor>[0], f: string): HostTensor => {
  const h = fromWireTensor(t, f);
  return h.dtype === 'float32' ? { ...h, data: h.data.slice() } : { ...h, data: h.data.slice() };
};

/** A session echo: decode the step's tensor as the executor does, send it back as its result. */
function echoServer(fromWire: typeof fromWireTensor): Pick<ExecutorServiceServer, 'session' | 'getStatus'> {
  return {
    session(call) {
      call.on('data', (req: SessionRequest) => {
        if (req.kind?.$case !== 'step') return;
        const host = fromWire(req.kind.value.input, 'step.input');
        call.write({
          kind: {
            $case: 'result',
            value: { seq: req.kind.value.seq, output: { $case: 'tensor', value: toWireTensor(host) }, computeMs: 0, queueMs: 0, serviceMs: 0 },
          },
        });
      });
      call.on('end', () => call.end());
    },
    getStatus(_c, cb) {
      cb({ code: grpc.status.UNIMPLEMENTED });
    },
  };
}

interface Clients {
  raw: grpc.Client;
  project: grpc.Client;
  generated: grpc.Client;
}

/** CPU time of this process (all threads, user + system), ms. */
const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** `count` ping-pongs of `bytes` each way: MB/s of payload (both directions) and process CPU ms per MB. */
async function run(variant: Variant, clients: Clients, bytes: number, count: number): Promise<{ mbps: number; cpuMsPerMB: number }> {
  const host: HostTensor = { dtype: 'float32', shape: [1, bytes / 4], data: Float32Array.from({ length: bytes / 4 }, (_, i) => Math.sin(i)) };
  const rawPayload = Buffer.from(host.data.buffer);
  const fromWire = variant === 'project' ? fromWireTensor : copyingFromWire;
  return new Promise((resolve, reject) => {
    const def = variant === 'generated' ? GENERATED_SERVICE.session : ExecutorServiceService.session;
    // Both streams take writes and emit messages; their element types differ by variant.
    const call = (variant === 'raw'
      ? clients.raw.makeBidiStreamRequest(RAW_SERVICE.echo.path, identity, identity)
      : clients[variant].makeBidiStreamRequest(def.path, def.requestSerialize, def.responseDeserialize)) as unknown as grpc.ClientDuplexStream<
      unknown,
      unknown
    >;
    let done = 0;
    const c0 = cpuMs();
    const t0 = performance.now();
    const send = (): void => {
      if (variant === 'raw') call.write(rawPayload);
      else call.write({ kind: { $case: 'step', value: { seq: String(done + 1), stageBegin: 1, stageEnd: 2, input: toWireTensor(host), sample: false } } });
    };
    call.on('data', (m: unknown) => {
      if (variant === 'raw') {
        if ((m as Buffer).length !== bytes) reject(new Error('short echo'));
      } else {
        const r = (m as SessionResponse).kind;
        if (r?.$case !== 'result' || r.value.output?.$case !== 'tensor') {
          reject(new Error('not a tensor result'));
          return;
        }
        const back = fromWire(r.value.output.value, 'result.tensor');
        if (back.data.length !== host.data.length) reject(new Error('short echo'));
      }
      if (++done === count) {
        call.end();
        const mb = (2 * bytes * count) / 1e6;
        resolve({ mbps: mb / ((performance.now() - t0) / 1000), cpuMsPerMB: (cpuMs() - c0) / mb });
      } else send();
    });
    call.on('error', reject);
    send();
  });
}

async function main(): Promise<void> {
  const server = new grpc.Server(channelOptions(MAX));
  server.addService(RAW_SERVICE, {
    echo: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on('data', (b: Buffer) => call.write(b));
      call.on('end', () => call.end());
    },
  });
  server.addService(ExecutorServiceService, echoServer(fromWireTensor));
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  // The generated variant needs its own server too: a server has one definition per path.
  const genServer = new grpc.Server(channelOptions(MAX));
  genServer.addService(GENERATED_SERVICE, echoServer(copyingFromWire));
  const genPort = await new Promise<number>((res, rej) =>
    genServer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  const creds = grpc.credentials.createInsecure();
  const Ctor = grpc.makeGenericClientConstructor({}, 'bench');
  const clients: Clients = {
    raw: new Ctor(`127.0.0.1:${port}`, creds, channelOptions(MAX)),
    project: new Ctor(`127.0.0.1:${port}`, creds, channelOptions(MAX)),
    generated: new Ctor(`127.0.0.1:${genPort}`, creds, channelOptions(MAX)),
  };
  type Spread = { median: number; min: number; max: number };
  /** One payload size: each variant's figures, and each variant over raw. */
  type SizeResult = { bytes: number; messagesPerRep: number } & Partial<Record<Variant, { MBps: Spread; cpuMsPerMB: Spread }>> &
    Partial<Record<`${Exclude<Variant, 'raw'>}VsRaw`, { throughput: Spread; cpu: Spread }>>;
  const results: SizeResult[] = [];
  for (const bytes of sizes) {
    if (bytes % 4 !== 0) throw new Error(`--sizes: each size must be a multiple of 4 bytes, given ${bytes}`);
    const count = Math.max(4, Math.round((mbPerRep * 1e6) / (2 * bytes)));
    for (const v of VARIANTS) await run(v, clients, bytes, Math.max(2, count >> 3)); // warm-up
    const mbps: Record<Variant, number[]> = { raw: [], project: [], generated: [] };
    const cpu: Record<Variant, number[]> = { raw: [], project: [], generated: [] };
    for (let r = 0; r < reps; r++) {
      const order = VARIANTS.map((_, i) => VARIANTS[(i + r) % VARIANTS.length]);
      for (const v of order) {
        const x = await run(v, clients, bytes, count);
        mbps[v].push(x.mbps);
        cpu[v].push(x.cpuMsPerMB);
      }
      process.stderr.write(
        `${bytes} B rep ${r + 1}/${reps}: ${VARIANTS.map((v) => `${v} ${mbps[v][r].toFixed(0)} MB/s ${cpu[v][r].toFixed(2)} CPU ms/MB`).join(', ')}\n`,
      );
    }
    const stats = (xs: number[]): { median: number; min: number; max: number } => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });
    // Per repetition: throughput ratio, and CPU-time ratio (raw CPU per MB / variant CPU per MB:
    // the throughput ratio a CPU-bound run would show, steadier on a shared machine).
    const ratios = (v: Variant): number[] => mbps[v].map((x, i) => x / mbps.raw[i]);
    const cpuRatios = (v: Variant): number[] => cpu[v].map((x, i) => cpu.raw[i] / x);
    const result: SizeResult = { bytes, messagesPerRep: count };
    for (const v of VARIANTS) result[v] = { MBps: stats(mbps[v]), cpuMsPerMB: stats(cpu[v]) };
    for (const v of (['project', 'generated'] as const).filter((v) => VARIANTS.includes(v) && VARIANTS.includes('raw'))) {
      result[`${v}VsRaw` as const] = { throughput: stats(ratios(v)), cpu: stats(cpuRatios(v)) };
    }
    results.push(result);
  }
  for (const c of Object.values(clients)) c.close();
  await Promise.all([server, genServer].map((s) => new Promise<void>((res) => s.tryShutdown(() => res()))));
  const f = (x: number, d = 0): string => x.toFixed(d);
  const st = (x: { median: number; min: number; max: number }, d = 0): string => `${f(x.median, d)} (${f(x.min, d)}-${f(x.max, d)})`;
  const lines = ['median (min-max) over repetitions; ratios are per repetition, variant / raw (CPU: raw CPU per MB / variant CPU per MB)'];
  lines.push(`${'payload'.padEnd(10)}${'variant'.padEnd(11)}${'MB/s'.padEnd(18)}${'CPU ms/MB'.padEnd(20)}${'throughput / raw'.padEnd(22)}CPU-equivalent / raw`);
  for (const r of results) {
    for (const v of VARIANTS) {
      const x = r[v];
      if (!x) continue; // every variant is measured: never
      const rel = v === 'raw' ? undefined : r[`${v}VsRaw` as const];
      lines.push(
        `${`${f(r.bytes / 1024)} KiB`.padEnd(10)}${v.padEnd(11)}${st(x.MBps).padEnd(18)}${st(x.cpuMsPerMB, 2).padEnd(20)}${(rel ? st(rel.throughput, 3) : '1').padEnd(22)}${rel ? st(rel.cpu, 3) : '1'}`,
      );
    }
  }
  const env = {
    node: process.version,
    cpus: os.cpus().length,
    loadavg: os.loadavg().map((x) => Number(x.toFixed(2))),
    reps,
    mbPerRep,
    pattern: 'ping-pong, one bidi stream per variant, client and server in one process',
  };
  process.stdout.write(`${lines.join('\n')}\n\nenv: ${JSON.stringify(env)}\n`);
  mkdirSync(path.dirname(jsonOut), { recursive: true });
  writeFileSync(jsonOut, `${JSON.stringify({ env, results }, null, 2)}\n`);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
