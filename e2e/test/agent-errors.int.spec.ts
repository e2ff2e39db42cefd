import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { encode, importHfModel, modelIdOf, SplitPipeline } from '@tandem/model';
import type { AgentServiceClient, GenerateRequest, GenerateResponse } from '@tandem/protocol';
import { createLogger } from '@tandem/service-kit';
import { OnnxStageEngine, type ExecutorServer } from '@tandem/server-executor';
import { expectRefusal, makeTempModel, randomWeights, SMALL_HF_CONFIG, withTimeout, writeHfFixture, type TempModel } from '@tandem/testkit';
import { makeCredentials, type TestCredentials } from './credentials';
import { AgentFleet, startExecutor, stopStack, type Deployment } from './stack';

// The agent's answers to bad input, through its gRPC API with a real executor on 127.0.0.1:
// bad input stays INVALID_ARGUMENT (never INTERNAL), the message names the field and fits in
// 1 KiB, and a healthy generation running beside it still gets the one-process tokens. Every port
// serves mTLS with bearer tokens, as deployed (e2e/test/credentials.ts).

const log = createLogger({ name: 'test', level: 'silent' });
/** The small model's vocabulary (SMALL_HF_CONFIG): far below GPT-2's 50,257 ids. */
const VOCAB = SMALL_HF_CONFIG.vocab_size;

type Outcome = { ids: number[]; error?: grpc.ServiceError };

function run(client: AgentServiceClient, req: Partial<GenerateRequest>): Promise<Outcome> {
  return withTimeout(
    new Promise<Outcome>((resolve) => {
      const ids: number[] = [];
      const call = client.generate({ input: undefined, maxNewTokens: 1, placement: '', ...req });
      call.on('data', (m: GenerateResponse) => {
        if (m.kind?.$case === 'token') ids.push(m.kind.value.id);
      });
      call.on('error', (error: grpc.ServiceError) => resolve({ ids, error }));
      call.on('end', () => resolve({ ids }));
    }),
    30_000,
    'a generation',
  );
}

describe('client-agent keeps bad input INVALID_ARGUMENT, with short messages', () => {
  let creds: TestCredentials;
  let root: string;
  let smallDir: string;
  let tiny: TempModel;
  let executor: ExecutorServer;
  const fleet = new AgentFleet();
  /** An agent on the executor's small model, and one whose own model knows all GPT-2 ids (modelId '' accepts any executor). */
  let small: AgentServiceClient;
  let wide: AgentServiceClient;

  /** The services' shared setting: this test's credentials, no NATS, telemetry every second. */
  const deployment = (): Deployment => ({ log, creds, telemetryIntervalMs: 1000 });

  const startAgent = async (modelDir: string, modelId: string, executorAddr: string): Promise<AgentServiceClient> =>
    (await fleet.start({ modelDir, modelId, clientId: `dev-${fleet.agents.length}`, stages: [0, 1, 2, 3, 4, 5], executorAddr }, deployment())).client;

  beforeAll(async () => {
    creds = makeCredentials({ clients: ['dev-0', 'dev-1'] });
    root = mkdtempSync(join(tmpdir(), 'tandem-agent-errors-'));
    const hf = join(root, 'hf');
    writeHfFixture(hf, SMALL_HF_CONFIG, randomWeights(SMALL_HF_CONFIG, 5));
    smallDir = join(root, 'small');
    await importHfModel({ from: hf, out: smallDir });
    tiny = await makeTempModel();
    const engine = await OnnxStageEngine.load(smallDir, { intraOpNumThreads: 1 });
    let executorAddr: string;
    ({ server: executor, addr: executorAddr } = await startExecutor(engine, deployment()));
    small = await startAgent(smallDir, modelIdOf(smallDir), executorAddr);
    wide = await startAgent(tiny.dir, '', executorAddr);
  });

  afterAll(async () => {
    await stopStack({ ...fleet, executor });
    tiny?.remove();
    if (root) rmSync(root, { recursive: true, force: true });
    creds?.remove();
  });

  /** Runs `bad` while a healthy generation runs on the small agent, and checks the healthy one's tokens. */
  const besideHealthy = async (bad: () => Promise<Outcome>): Promise<Outcome> => {
    const prompt = [5, 17, 211, 3];
    const pipe = await SplitPipeline.load(smallDir, 'SSSSSS');
    const want = await pipe.generate(prompt, { maxNewTokens: 6 }).finally(() => pipe.close());
    const healthy = run(small, { input: { $case: 'ids', value: { ids: prompt } }, maxNewTokens: 6, placement: 'CCSSSC' });
    const refused = await bad();
    const ok = await healthy;
    expect(ok.error).toBeUndefined();
    expect(ok.ids).toEqual(want);
    return refused;
  };

  it('refuses a text prompt whose ids exceed the model vocabulary with INVALID_ARGUMENT naming prompt', async () => {
    const text = 'Hello, world';
    expect(Math.max(...encode(text))).toBeGreaterThanOrEqual(VOCAB); // the case: GPT-2 ids past a small vocabulary
    const o = await besideHealthy(() => run(small, { input: { $case: 'prompt', value: text }, maxNewTokens: 2 }));
    expectRefusal(o.error, grpc.status.INVALID_ARGUMENT, 'prompt must tokenise to ids in 0..299', 'given id');
  });

  it.each([
    ['all-server (server-side decoding)', '', 'generate.input token ids must be in 0..299'],
    ['a split', 'CSSSSS', 'step.input.shape must be [1, T>=1, 32]'],
  ])("passes the executor's INVALID_ARGUMENT through (%s), not INTERNAL", async (_what, placement, detail) => {
    const o = await besideHealthy(() => run(wide, { input: { $case: 'ids', value: { ids: [1000, 2] } }, maxNewTokens: 2, placement }));
    expectRefusal(o.error, grpc.status.INVALID_ARGUMENT, 'executor: ', detail);
  });

  it('cuts a 20,000-character placement in its message', async () => {
    const o = await run(small, { input: { $case: 'ids', value: { ids: [1, 2] } }, maxNewTokens: 1, placement: 'C'.repeat(20_000) });
    expectRefusal(o.error, grpc.status.INVALID_ARGUMENT, 'placement must be 6 letters C or S', '(20000 chars)');
  });

  it('refuses bytes that are no GenerateRequest with INVALID_ARGUMENT, not INTERNAL', async () => {
    const port = Number(small.getChannel().getTarget().split(':').pop());
    const raw = new grpc.Client(`127.0.0.1:${port}`, ...creds.clientArgs());
    try {
      const o = await withTimeout(
        new Promise<Outcome>((resolve) => {
          const call = raw.makeServerStreamRequest(
            '/tandem.agent.v1.AgentService/Generate',
            (b: Buffer) => b,
            (b: Buffer) => b,
            Buffer.from([0x12, 0xff]),
          );
          call.on('data', () => {});
          call.on('error', (error: grpc.ServiceError) => resolve({ ids: [], error }));
          call.on('end', () => resolve({ ids: [] }));
        }),
        10_000,
        'the refusal',
      );
      expectRefusal(o.error, grpc.status.INVALID_ARGUMENT, 'Generate request', 'protobuf');
    } finally {
      raw.close();
    }
  });
});
