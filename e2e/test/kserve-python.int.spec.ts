import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { SplitPipeline } from '@tandem/model';
import { channelOptions, GRPCInferenceServiceClient, ModelInferRequest, type ModelInferResponse } from '@tandem/protocol';
import { ExecutorServer, WorkerStageEngine } from '@tandem/server-executor';
import { createLogger } from '@tandem/service-kit';
import { EXECUTOR_SETTINGS, makeTempModel, wholeModelMetadata, type TempModel } from '@tandem/testkit';

const ROOT = join(__dirname, '..', '..');
const PYTHON = '/usr/bin/python3';
const GRPC_PLUGIN = '/usr/bin/grpc_python_plugin';
const PROMPT = [464, 2068, 7586, 21831, 18045];
/** Debian's packages the check needs (CI installs them: .ci/run). */
const PACKAGES = 'python3-grpcio python3-protobuf python3-numpy protobuf-compiler protobuf-compiler-grpc';

/**
 * Why the Python side cannot run here, or undefined: the test fails with this (it is never
 * skipped, so CI cannot pass without the client that is not ours).
 */
function missingTools(): string | undefined {
  const missing: string[] = [];
  if (!existsSync(PYTHON)) missing.push(PYTHON);
  if (!existsSync(GRPC_PLUGIN)) missing.push(`${GRPC_PLUGIN} (protobuf-compiler-grpc)`);
  if (spawnSync('protoc', ['--version']).status !== 0) missing.push('protoc (protobuf-compiler)');
  if (existsSync(PYTHON)) {
    const r = spawnSync(PYTHON, ['-c', 'import grpc, google.protobuf, numpy'], { encoding: 'utf8' });
    if (r.status !== 0) missing.push(`python modules grpc, google.protobuf, numpy (${r.stderr.trim().split('\n').pop() ?? ''})`);
  }
  return missing.length === 0 ? undefined : `the KServe v2 check needs Debian's ${PACKAGES} (apt-get install -y ${PACKAGES}); missing: ${missing.join('; ')}`;
}

interface PythonReport {
  live: boolean;
  ready: boolean;
  server: { name: string; version: string };
  model_ready: boolean;
  metadata: { name: string; versions: string[]; platform: string; inputs: unknown[]; outputs: unknown[] };
  infer: {
    id: string;
    model_name: string;
    model_version: string;
    next_token: number;
    next_token_shape: number[];
    logits_shape: number[];
    logits_argmax: number;
    logits_base64: string;
  };
  typed: { outputs: string[]; next_token: number[] };
  chained: { hidden_shape: number[]; logits_shape: number[]; next_token: number; last_logits_base64: string };
  unknown_model: { code: string; details: string };
  short_raw: { code: string; details: string };
}

describe('KServe v2 from a client that is not ours: Python grpcio with stubs compiled from the proto', () => {
  let model: TempModel;
  let server: ExecutorServer;
  let addr: string;
  let stubs: string;
  let modelId: string;
  let stageCount: number;
  let nEmbd: number;
  let vocab: number;
  let expectedToken: number;
  /** The last position's logits from the executor through the TypeScript client, raw bytes. */
  let tsLogits: Buffer;
  let report: PythonReport;

  beforeAll(async () => {
    const missing = missingTools();
    if (missing) throw new Error(missing);
    stubs = mkdtempSync(join(tmpdir(), 'tandem-kserve-stubs-'));
    const protoc = spawnSync(
      'protoc',
      [
        '-I',
        join(ROOT, 'proto'),
        `--python_out=${stubs}`,
        `--grpc_out=${stubs}`,
        `--plugin=protoc-gen-grpc=${GRPC_PLUGIN}`,
        join(ROOT, 'proto/inference/grpc_predict_v2.proto'),
      ],
      { encoding: 'utf8' },
    );
    if (protoc.status !== 0) throw new Error(`protoc failed on proto/inference/grpc_predict_v2.proto: ${protoc.stderr}`);

    model = await makeTempModel();
    const engine = await WorkerStageEngine.load(model.dir, { intraOpNumThreads: 1, fuseAllStages: true });
    ({ modelId, stageCount, nEmbd, vocabSize: vocab } = engine);
    server = new ExecutorServer({
      engine,
      log: createLogger({ name: 'test', level: 'silent' }),
      ...EXECUTOR_SETTINGS,
      serverId: 'kserve-py',
      telemetryIntervalMs: 1000,
    });
    addr = `127.0.0.1:${(await server.start()).port}`;

    const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(stageCount));
    [expectedToken] = await pipe.generate(PROMPT, { maxNewTokens: 1 });
    await pipe.close();

    const client = new GRPCInferenceServiceClient(addr, grpc.credentials.createInsecure(), channelOptions(8 << 20));
    const request = ModelInferRequest.fromPartial({
      modelName: modelId,
      inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, PROMPT.length] }],
      rawInputContents: [Buffer.from(BigInt64Array.from(PROMPT, BigInt).buffer)],
    });
    const ts = await new Promise<ModelInferResponse>((resolve, reject) =>
      client.modelInfer(request, new grpc.Metadata(), { deadline: Date.now() + 30_000 }, (e, r) => (e ? reject(e) : resolve(r))),
    );
    client.close();
    tsLogits = ts.rawOutputContents[ts.outputs.findIndex((o) => o.name === 'logits')];

    // Asynchronously: the executor runs in this process and must answer while Python waits.
    const { stdout } = await promisify(execFile)(
      PYTHON,
      [
        join(ROOT, 'e2e/python/kserve_check.py'),
        '--stubs',
        stubs,
        '--addr',
        addr,
        '--model',
        modelId,
        '--prompt',
        PROMPT.join(','),
        '--cut',
        '3',
        '--stages',
        String(stageCount),
      ],
      { timeout: 120_000, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } },
    );
    report = JSON.parse(stdout) as PythonReport;
  }, 180_000);

  afterAll(async () => {
    await server?.stop({ graceMs: 100 });
    model?.remove();
    if (stubs) rmSync(stubs, { recursive: true, force: true });
  });

  it('sees the server live and ready, its metadata and the model’s', () => {
    expect(report).toMatchObject({ live: true, ready: true, model_ready: true, server: { name: 'tandem-executor' } });
    expect(report.metadata).toEqual(wholeModelMetadata(modelId, vocab));
  });

  it('gets the next token of the reference pipeline and the same logits bytes as the TypeScript client', () => {
    expect(report.infer).toMatchObject({
      id: 'py-1',
      model_name: modelId,
      model_version: '1',
      next_token: expectedToken,
      next_token_shape: [1, 1],
      logits_shape: [1, vocab],
    });
    expect(report.infer.logits_argmax).toBe(expectedToken);
    expect(Buffer.from(report.infer.logits_base64, 'base64').equals(tsLogits)).toBe(true);
    expect(report.typed).toEqual({ outputs: ['next_token'], next_token: [expectedToken] });
  });

  it('chains two stage ranges with numpy to the whole model’s logits', () => {
    expect(report.chained).toMatchObject({ hidden_shape: [1, PROMPT.length, nEmbd], logits_shape: [1, PROMPT.length, vocab], next_token: expectedToken });
    expect(Buffer.from(report.chained.last_logits_base64, 'base64').equals(tsLogits)).toBe(true);
  });

  it('receives refusals it can read: NOT_FOUND and INVALID_ARGUMENT naming the field', () => {
    expect(report.unknown_model.code).toBe('NOT_FOUND');
    expect(report.unknown_model.details).toContain("model_name must be '");
    expect(report.unknown_model.details).toContain("given 'no-such-model'");
    expect(report.short_raw).toEqual({ code: 'INVALID_ARGUMENT', details: 'raw_input_contents[0] must hold 16 bytes (INT64 [1, 2], 8 bytes each), given 12' });
  });
});
