import * as grpc from '@grpc/grpc-js';
import { SplitPipeline } from '@tandem/model';
import { fromWireTensor, type HostTensor, type SessionResponse, type Tensor } from '@tandem/protocol';
import { expectRefusal, makeTempModel, withTimeout, type TempModel } from '@tandem/testkit';
import { OnnxStageEngine } from '../src';
import { ids, type TestSession } from './session-client';
import { startTestExecutor, type TestExecutor } from './test-executor';

// Bad input on a session, each case against the real executor over gRPC: the status code, a
// message naming the field and the rule, and a message under 1 KiB (gRPC C-core clients refuse
// trailers over 8 KiB, and then see RESOURCE_EXHAUSTED instead of the reason).

const N_EMBD = 64;

const hidden = (t: number, fill = 0.5): HostTensor => ({ dtype: 'float32', shape: [1, t, N_EMBD], data: new Float32Array(t * N_EMBD).fill(fill) });

describe('server-executor refuses bad input clearly (real model over gRPC)', () => {
  let model: TempModel;
  let exec: TestExecutor;
  let raw: grpc.Client;
  let stageCount: number;
  let modelId: string;
  const session = (): TestSession => exec.session();

  /** The tokens a whole-model run gives for `prompt`. */
  const expectedTokens = async (prompt: number[], n: number): Promise<number[]> => {
    const pipe = await SplitPipeline.load(model.dir, 'S'.repeat(stageCount));
    try {
      return await pipe.generate(prompt, { maxNewTokens: n });
    } finally {
      await pipe.close();
    }
  };

  /**
   * A healthy split generation on its own session (embed..block.0.mlp, then the rest, per
   * token), run while `during` refuses something on another session: it must give the
   * one-process tokens.
   */
  const healthyBeside = async (during: () => Promise<void>): Promise<void> => {
    const prompt = [464, 2068, 7586, 21831];
    const want = await expectedTokens(prompt, 3);
    const s = session();
    s.open();
    await s.next(1);
    const got: number[] = [];
    let input = ids(...prompt);
    let n = 1;
    let seq = 0;
    for (let i = 0; i < 3; i++) {
      s.step(++seq, 0, 3, input);
      const h = await s.next(++n);
      if (h.kind?.$case !== 'result' || h.kind.value.output?.$case !== 'tensor') throw new Error('expected a hidden state');
      if (i === 1) await during();
      s.step(++seq, 3, stageCount, fromWireTensor(h.kind.value.output.value, 'h'), true);
      const tok = await s.next(++n);
      if (tok.kind?.$case !== 'result' || tok.kind.value.output?.$case !== 'token') throw new Error('expected a token');
      got.push(tok.kind.value.output.value);
      input = ids(tok.kind.value.output.value);
    }
    expect(got).toEqual(want);
    s.call.end();
  };

  beforeAll(async () => {
    model = await makeTempModel();
    const engine = await OnnxStageEngine.load(model.dir, { intraOpNumThreads: 1 });
    stageCount = engine.stageCount;
    modelId = engine.modelId;
    exec = await startTestExecutor(engine, { serverId: 'exec-hard', maxContextTokens: 64 });
    raw = new grpc.Client(exec.addr, grpc.credentials.createInsecure());
  });

  afterEach(() => exec.cancelSessions());

  afterAll(async () => {
    raw?.close();
    await exec?.stop();
    model?.remove();
  });

  describe('NaN and ±Infinity in a hidden state', () => {
    it.each([
      ['NaN', Number.NaN, 70],
      ['+Infinity', Number.POSITIVE_INFINITY, 0],
      ['-Infinity', Number.NEGATIVE_INFINITY, 2 * N_EMBD - 1],
    ])('refuses %s with INVALID_ARGUMENT naming step.input and the first bad index, a healthy session unaffected', async (_what, value, index) => {
      await healthyBeside(async () => {
        const bad = session();
        bad.open();
        await bad.next(1);
        const x = hidden(2);
        x.data[index] = value;
        if (index + 5 < x.data.length) x.data[index + 5] = Number.NaN; // only the first is named
        bad.step(1, 3, stageCount, x, true);
        expectRefusal(await bad.ended, grpc.status.INVALID_ARGUMENT, 'step.input', 'finite', `at index ${index}`, `given ${value}`);
      });
    });

    it('still accepts finite extremes (largest float32, subnormals, -0)', async () => {
      const s = session();
      s.open();
      await s.next(1);
      const x = hidden(1);
      x.data[0] = 3.4028234663852886e38;
      x.data[1] = -1.401298464324817e-45;
      x.data[2] = -0;
      s.step(1, stageCount - 1, stageCount, x, true);
      const m = await s.next(2);
      expect(m.kind?.$case).toBe('result');
    });
  });

  describe('64-bit values past 2^53', () => {
    const SEQ_BIG = '9007199254740993'; // 2^53 + 1: not a double
    const SEQ_MAX = '18446744073709551615'; // 2^64 - 1

    it('accepts a seq and a plan epoch up to 2^64-1 and echoes the seq exactly', async () => {
      const s = session();
      s.call.write({ kind: { $case: 'open', value: { clientId: 't', planEpoch: SEQ_MAX, modelId: '' } } });
      expect((await s.next(1)).kind?.$case).toBe('opened');
      s.step(SEQ_BIG, 0, stageCount, ids(1, 2, 3), true);
      s.step(SEQ_MAX, 0, stageCount, ids(4), true);
      const a = await s.next(2);
      const b = await s.next(3);
      expect([a.kind?.$case === 'result' && a.kind.value.seq, b.kind?.$case === 'result' && b.kind.value.seq]).toEqual([SEQ_BIG, SEQ_MAX]);
      s.call.end();
      expect((await s.ended).code).toBe(grpc.status.OK);
    });

    it('compares seqs past 2^53 exactly (2^53 after 2^53+1 does not increase)', async () => {
      const s = session();
      s.open();
      s.step(SEQ_BIG, 0, 1, ids(1));
      await s.next(2);
      s.step('9007199254740992', 1, 2, hidden(1));
      expectRefusal(await s.ended, grpc.status.INVALID_ARGUMENT, 'step.seq must increase', SEQ_BIG);
    });

    it('accepts a seq past 2^53 on a server-side generation and echoes it in every token', async () => {
      const s = session();
      s.open();
      s.generate(SEQ_MAX, ids(5, 6), 3);
      await s.next(4);
      expect(s.answers.slice(1).map((m) => m.kind?.$case === 'token' && m.kind.value.seq)).toEqual([SEQ_MAX, SEQ_MAX, SEQ_MAX]);
    });

    it.each([
      ['2^60', '1152921504606846976', 1],
      ['-2^63', '-9223372036854775808', 2],
    ])('refuses a tensor dimension of %s with INVALID_ARGUMENT naming it, not INTERNAL', async (_what, dim, at) => {
      await healthyBeside(async () => {
        const s = session();
        s.open();
        await s.next(1);
        const shape = [1, 1, N_EMBD] as unknown[];
        shape[at] = dim; // the encoder takes a decimal string for an int64
        const input = { dtype: 1, shape, data: Buffer.alloc(4 * N_EMBD) } as unknown as Tensor;
        s.call.write({ kind: { $case: 'step', value: { seq: '1', stageBegin: 1, stageEnd: 2, input, sample: false } } });
        expectRefusal(await s.ended, grpc.status.INVALID_ARGUMENT, `step.input.shape[${at}]`, dim);
      });
    });

    it('refuses bytes that are no SessionRequest with INVALID_ARGUMENT naming the message, not INTERNAL', async () => {
      const call = raw.makeBidiStreamRequest(
        '/tandem.executor.v1.ExecutorService/Session',
        (b: Buffer) => b,
        (b: Buffer) => b,
      );
      const ended = new Promise<grpc.ServiceError>((resolve) => call.on('error', resolve));
      call.on('data', () => {});
      call.write(Buffer.from([0x12, 0xff, 0x01])); // field 2 (step), length 255, 1 byte present
      const err = await withTimeout(ended, 5000, 'the refusal');
      expectRefusal(err, grpc.status.INVALID_ARGUMENT, 'SessionRequest', 'protobuf');
    });

    it('refuses bytes that are no GetStatusRequest with INVALID_ARGUMENT', async () => {
      const err = await new Promise<grpc.ServiceError | null>((resolve) => {
        raw.makeUnaryRequest(
          '/tandem.executor.v1.ExecutorService/GetStatus',
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from([0x0a, 0x7f]),
          (e) => resolve(e),
        );
      });
      expect(err).not.toBeNull();
      expectRefusal(err!, grpc.status.INVALID_ARGUMENT, 'GetStatusRequest');
    });
  });

  describe('status messages stay under 1 KiB whatever the input', () => {
    const long = 'x'.repeat(20_000);
    const dims5000 = new Array<number>(5000).fill(1);
    it.each([
      ['a 20,000-character model id', (s: TestSession) => s.open(long), grpc.status.FAILED_PRECONDITION, ['open.model_id must be', '20000 chars']],
      [
        'a 20,000-character model id and client id',
        (s: TestSession) => s.call.write({ kind: { $case: 'open', value: { clientId: long, planEpoch: '0', modelId: long } } }),
        grpc.status.FAILED_PRECONDITION,
        ['open.model_id'],
      ],
      [
        'a hidden state of 5,000 dims',
        (s: TestSession) => {
          s.open();
          s.step(1, 1, 2, { dtype: 'float32', shape: dims5000, data: new Float32Array(1) });
        },
        grpc.status.INVALID_ARGUMENT,
        ['step.input.shape must be', '5000 dims'],
      ],
      [
        'ids of 5,000 dims',
        (s: TestSession) => {
          s.open();
          s.step(1, 0, 1, { dtype: 'int64', shape: dims5000, data: new BigInt64Array(1) });
        },
        grpc.status.INVALID_ARGUMENT,
        ['step.input.shape must be'],
      ],
      [
        'a prompt of 5,000 dims',
        (s: TestSession) => {
          s.open();
          s.generate(1, { dtype: 'int64', shape: dims5000, data: new BigInt64Array(1) }, 1);
        },
        grpc.status.INVALID_ARGUMENT,
        ['generate.input.shape must be'],
      ],
      [
        '5,000 dims that do not fit the bytes',
        (s: TestSession) => {
          s.open();
          s.call.write({
            kind: {
              $case: 'step',
              value: { seq: '1', stageBegin: 1, stageEnd: 2, input: { dtype: 1, shape: dims5000, data: Buffer.alloc(12) }, sample: false },
            },
          });
        },
        grpc.status.INVALID_ARGUMENT,
        ['step.input.data must hold 4 bytes'],
      ],
      [
        '5,000 huge dims',
        (s: TestSession) => {
          s.open();
          s.call.write({
            kind: {
              $case: 'step',
              value: {
                seq: '1',
                stageBegin: 1,
                stageEnd: 2,
                input: { dtype: 1, shape: new Array<number>(5000).fill(1 << 20), data: Buffer.alloc(4) },
                sample: false,
              },
            },
          });
        },
        grpc.status.INVALID_ARGUMENT,
        ['step.input.shape must have at most'],
      ],
    ] as const)('cuts %s', async (_what, act, code, parts) => {
      const s = session();
      act(s);
      expectRefusal(await s.ended, code, ...parts);
    });

    it('still names the model served in full when it is short', async () => {
      const s = session();
      s.open('0123456789abcdef');
      expectRefusal(await s.ended, grpc.status.FAILED_PRECONDITION, `open.model_id must be '${modelId}' (the model served), given '0123456789abcdef'`);
    });
  });

  describe('a step that does not continue the session', () => {
    /** A session that ran a prefill of `prompt` over every stage; resolves with its next answer number. */
    const prefilled = async (s: TestSession, prompt: number[]): Promise<number> => {
      s.open();
      s.step(1, 0, stageCount, ids(...prompt), true);
      const m = await s.next(2);
      expect(m.kind?.$case).toBe('result');
      return 3;
    };

    it('refuses a decode step starting at a later stage than the prefill, naming stage_begin and 0', async () => {
      await healthyBeside(async () => {
        const s = session();
        await prefilled(s, [1, 2, 3]);
        s.step(2, 3, stageCount, hidden(1), true);
        expectRefusal(await s.ended, grpc.status.FAILED_PRECONDITION, 'step.stage_begin must be 0', 'given 3');
      });
    });

    it('refuses a range whose stages hold different token counts, naming stage_end', async () => {
      const s = session();
      s.open();
      s.step(1, 3, stageCount, hidden(2), true);
      await s.next(2);
      s.step(2, 2, stageCount, hidden(1), true);
      expectRefusal(await s.ended, grpc.status.FAILED_PRECONDITION, 'step.stage_end must be 3', 'given 6');
    });

    it('refuses a step that skips the rest of the previous token, naming stage_begin and the stage expected', async () => {
      const s = session();
      const n = await prefilled(s, [1, 2, 3]);
      s.step(2, 0, 3, ids(4));
      await s.next(n);
      s.step(3, 0, 3, ids(5));
      expectRefusal(await s.ended, grpc.status.FAILED_PRECONDITION, 'step.stage_begin must be 3', 'given 0');
    });

    it('accepts a split that stays the same, prefill and decode alike (head on its own)', async () => {
      const prompt = [15496, 11, 995];
      const want = await expectedTokens(prompt, 3);
      const s = session();
      s.open();
      await s.next(1);
      let n = 1;
      let seq = 0;
      let input = ids(...prompt);
      const got: number[] = [];
      for (let i = 0; i < 3; i++) {
        s.step(++seq, 0, stageCount - 1, input);
        const h = await s.next(++n);
        if (h.kind?.$case !== 'result' || h.kind.value.output?.$case !== 'tensor') throw new Error('expected a hidden state');
        s.step(++seq, stageCount - 1, stageCount, fromWireTensor(h.kind.value.output.value, 'h'), true);
        const m: SessionResponse = await s.next(++n);
        if (m.kind?.$case !== 'result' || m.kind.value.output?.$case !== 'token') throw new Error('expected a token');
        got.push(m.kind.value.output.value);
        input = ids(m.kind.value.output.value);
      }
      expect(got).toEqual(want);
    });
  });
});
