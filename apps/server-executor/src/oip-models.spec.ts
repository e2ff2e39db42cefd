import { status } from '@grpc/grpc-js';
import { ModelInferRequest } from '@tandem/protocol';
import { StatusError } from '@tandem/service-kit';
import { OipModels } from './oip-models';

const models = new OipModels({ modelId: 'abc123', stageCount: 6, nEmbd: 4, vocabSize: 10, maxContextTokens: 8, maxRows: 3, maxMessageBytes: 64 << 10 });

const int64Bytes = (...v: number[]): Buffer => Buffer.from(BigInt64Array.from(v, BigInt).buffer);

/** A whole-model request for `ids` ([1, T]) with typed contents, `over` replacing any field. */
function idsRequest(ids: number[], over: Partial<ModelInferRequest> = {}): ModelInferRequest {
  return ModelInferRequest.fromPartial({
    modelName: 'abc123',
    inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, ids.length], contents: { int64Contents: ids } }],
    ...over,
  });
}

/** The status code and message `fn` throws. */
function refusal(fn: () => unknown): { code: status; message: string } {
  try {
    fn();
  } catch (err) {
    if (err instanceof StatusError) return { code: err.code, message: err.message };
    throw err;
  }
  throw new Error('expected a refusal');
}

describe('OipModels: the models served through the Open Inference Protocol', () => {
  it('names the whole model by the model id and each stage range under it', () => {
    const whole = models.resolve('abc123', '', 'name', 'version');
    expect(whole).toMatchObject({ begin: 0, end: 6, whole: true, input: { name: 'input_ids', datatype: 'INT64' } });
    expect(whole.outputs.map((o) => [o.name, o.datatype, o.shape])).toEqual([
      ['next_token', 'INT64', [-1, 1]],
      ['logits', 'FP32', [-1, 10]],
    ]);
    const middle = models.resolve('abc123/stages/2-4', '1', 'name', 'version');
    expect(middle).toMatchObject({
      begin: 2,
      end: 4,
      whole: false,
      input: { name: 'hidden_states', shape: [-1, -1, 4] },
      outputs: [{ name: 'hidden_states' }],
    });
    expect(models.resolve('abc123/stages/0-6', '', 'name', 'version')).toMatchObject({
      input: { name: 'input_ids' },
      outputs: [{ name: 'logits', shape: [-1, -1, 10] }],
    });
  });

  it.each([['other'], ['abc123/stages/4-4'], ['abc123/stages/0-7'], ['abc123/stages/01-2'], ['abc123/stages/a-b'], ['abc1234'], ['']])(
    'answers NOT_FOUND naming the model name %p',
    (name) => {
      const r = refusal(() => models.resolve(name, '', 'model_name', 'model_version'));
      expect(r.code).toBe(status.NOT_FOUND);
      expect(r.message).toBe(`model_name must be 'abc123' (the model served) or 'abc123/stages/<begin>-<end>' with 0 <= begin < end <= 6, given '${name}'`);
    },
  );

  it('answers NOT_FOUND naming a version that is not served', () => {
    const r = refusal(() => models.resolve('abc123', '2', 'name', 'version'));
    expect(r).toEqual({ code: status.NOT_FOUND, message: "version must be '1' or empty (model 'abc123' has one version), given '2'" });
  });

  it('gives the metadata of a model: versions, platform, tensors', () => {
    expect(models.metadata(models.resolve('abc123/stages/3-6', '', 'name', 'version'))).toEqual({
      name: 'abc123/stages/3-6',
      versions: ['1'],
      platform: 'onnxruntime_onnx',
      inputs: [{ name: 'hidden_states', datatype: 'FP32', shape: [-1, -1, 4] }],
      outputs: [{ name: 'logits', datatype: 'FP32', shape: [-1, -1, 10] }],
    });
  });

  it('takes typed and raw token ids alike, one row per batch entry, every output when none is asked for', () => {
    const typed = models.validate(idsRequest([1, 2, 3], { id: 'r1' }));
    expect(typed).toMatchObject({ id: 'r1', tokens: 3, raw: false });
    expect(typed.outputs.map((o) => o.name)).toEqual(['next_token', 'logits']);
    expect(typed.rows).toEqual([{ dtype: 'int64', shape: [1, 3], data: BigInt64Array.of(1n, 2n, 3n) }]);
    const raw = models.validate(
      ModelInferRequest.fromPartial({
        modelName: 'abc123',
        inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [2, 2] }],
        outputs: [{ name: 'logits' }],
        rawInputContents: [int64Bytes(1, 2, 3, 4)],
      }),
    );
    expect(raw).toMatchObject({ tokens: 2, raw: true });
    expect(raw.outputs.map((o) => o.name)).toEqual(['logits']);
    expect(raw.rows.map((r) => [...(r.data as BigInt64Array)])).toEqual([
      [1n, 2n],
      [3n, 4n],
    ]);
  });

  it('takes raw FP32 hidden states at any byte offset', () => {
    const values = Float32Array.from({ length: 8 }, (_, i) => i / 8);
    const shifted = Buffer.alloc(values.byteLength + 1);
    Buffer.from(values.buffer).copy(shifted, 1);
    const v = models.validate(
      ModelInferRequest.fromPartial({
        modelName: 'abc123/stages/1-3',
        inputs: [{ name: 'hidden_states', datatype: 'FP32', shape: [1, 2, 4] }],
        rawInputContents: [shifted.subarray(1)],
      }),
    );
    expect(v.rows[0]).toEqual({ dtype: 'float32', shape: [1, 2, 4], data: values });
  });

  const hidden = (shape: number[], fp32Contents: number[]): ModelInferRequest =>
    ModelInferRequest.fromPartial({ modelName: 'abc123/stages/1-2', inputs: [{ name: 'hidden_states', datatype: 'FP32', shape, contents: { fp32Contents } }] });

  it.each<[string, ModelInferRequest, string]>([
    ['no input', idsRequest([1], { inputs: [] }), "inputs must hold 1 tensor ('input_ids'), given 0"],
    [
      'a wrong input name',
      idsRequest([1], { inputs: [{ name: 'ids', datatype: 'INT64', shape: [1, 1], parameters: {}, contents: undefined }] }),
      "inputs[0].name must be 'input_ids', given 'ids'",
    ],
    [
      'a wrong datatype',
      idsRequest([1], { inputs: [{ name: 'input_ids', datatype: 'INT32', shape: [1, 1], parameters: {}, contents: undefined }] }),
      "inputs[0].datatype must be 'INT64' for 'input_ids', given 'INT32'",
    ],
    [
      'a wrong rank',
      idsRequest([1], { inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1], parameters: {}, contents: undefined }] }),
      'inputs[0].shape must be [B, T] with 1 <= B <= 3, T >= 1, given [1]',
    ],
    [
      'too many rows',
      idsRequest([1], { inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [4, 1], parameters: {}, contents: undefined }] }),
      'inputs[0].shape must be [B, T] with 1 <= B <= 3, T >= 1, given [4, 1]',
    ],
    ['too many tokens for the context', idsRequest([1, 2, 3, 4, 5, 6, 7, 8, 9]), "inputs[0].shape[1] (tokens) must be <= 8 (the executor's context), given 9"],
    [
      'a value count that does not match the shape',
      idsRequest([1, 2], { inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 3], parameters: {}, contents: { int64Contents: [1, 2] } as never }] }),
      'inputs[0].contents.int64_contents must hold 3 values (shape [1, 3]; or send raw_input_contents), given 2',
    ],
    ['a token id beyond the vocabulary', idsRequest([1, 10]), "inputs[0] ('input_ids') token ids must be in 0..9, given 10 at index 1"],
    ['a negative token id', idsRequest([-1]), "inputs[0] ('input_ids') token ids must be in 0..9, given -1 at index 0"],
    ['a hidden state of the wrong width', hidden([1, 1, 3], [0, 0, 0]), 'inputs[0].shape must be [B, T, 4] with 1 <= B <= 3, T >= 1, given [1, 1, 3]'],
    ['a NaN in a hidden state', hidden([1, 1, 4], [0, 0, NaN, 0]), "inputs[0] ('hidden_states') must hold finite FP32 values, given NaN at index 2"],
    [
      'raw bytes of the wrong length',
      idsRequest([], {
        inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 2], parameters: {}, contents: undefined }],
        rawInputContents: [Buffer.alloc(15)],
      }),
      'raw_input_contents[0] must hold 16 bytes (INT64 [1, 2], 8 bytes each), given 15',
    ],
    [
      'raw and typed contents together',
      idsRequest([1, 2], { rawInputContents: [int64Bytes(1, 2)] }),
      'inputs[0].contents must be empty when raw_input_contents is used, given int64_contents',
    ],
    [
      'more raw entries than inputs',
      idsRequest([], {
        inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], parameters: {}, contents: undefined }],
        rawInputContents: [int64Bytes(1), int64Bytes(2)],
      }),
      'raw_input_contents must hold one entry per input (1), given 2',
    ],
    [
      'values in the list of another datatype',
      idsRequest([], { inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 1], parameters: {}, contents: { fp32Contents: [1] } as never }] }),
      'inputs[0].contents must carry int64_contents only (datatype INT64), given fp32_contents',
    ],
    [
      'an output the model does not have',
      idsRequest([1], { outputs: [{ name: 'probs', parameters: {} }] }),
      "outputs[0].name must be one of 'next_token', 'logits', given 'probs'",
    ],
    [
      'an output asked for twice',
      idsRequest([1], {
        outputs: [
          { name: 'logits', parameters: {} },
          { name: 'logits', parameters: {} },
        ],
      }),
      "outputs[1].name must not repeat an earlier output, given 'logits'",
    ],
  ])('answers INVALID_ARGUMENT for %s, naming the field, the rule and the value', (_what, req, message) => {
    expect(refusal(() => models.validate(req))).toEqual({ code: status.INVALID_ARGUMENT, message });
  });

  it('refuses up front a request whose outputs would not fit in one message', () => {
    const small = new OipModels({ modelId: 'm', stageCount: 6, nEmbd: 4, vocabSize: 1000, maxContextTokens: 8, maxRows: 3, maxMessageBytes: 8192 });
    const req = ModelInferRequest.fromPartial({
      modelName: 'm/stages/0-6',
      inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [1, 2], contents: { int64Contents: [1, 2] } }],
    });
    expect(refusal(() => small.validate(req))).toEqual({
      code: status.INVALID_ARGUMENT,
      message:
        'outputs must fit in one message of 8192 bytes (EXECUTOR_MAX_MESSAGE_BYTES), given a request whose outputs take 8000: send fewer rows or tokens, or ask for fewer outputs',
    });
    // The whole model's logits are one row per batch entry: they fit.
    expect(small.validate({ ...req, modelName: 'm' }).outputs).toHaveLength(2);
  });
});
