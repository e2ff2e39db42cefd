import {
  firstNonFinite,
  quoted,
  renderShape,
  type HostTensor,
  type InferTensorContents,
  type ModelInferRequest,
  type ModelMetadataResponse,
} from '@tandem/protocol';
import { ValidationError } from '@tandem/service-kit';
import { ModelNotFoundError } from './errors';

/** The one version of every model the executor serves through the Open Inference Protocol. */
export const OIP_MODEL_VERSION = '1';
/** ModelMetadata.platform: what runs the models (Triton's name for ONNX models on onnxruntime). */
export const OIP_PLATFORM = 'onnxruntime_onnx';

/** An OIP tensor data type the executor's models use. */
export type OipDatatype = 'INT64' | 'FP32';

/** An input or output of a served model; -1 marks a dimension of any size. */
export interface OipTensorSpec {
  readonly name: string;
  readonly datatype: OipDatatype;
  readonly shape: readonly number[];
}

/**
 * A model as the Open Inference Protocol names it: the whole model (`whole`: token ids in, the
 * next token and the last position's logits out) or the stage range [begin, end) (the range's
 * input and output tensors, every position). Invariant: 0 <= begin < end <= stageCount, and a
 * whole model is [0, stageCount).
 */
export interface OipModel {
  readonly name: string;
  readonly begin: number;
  readonly end: number;
  readonly whole: boolean;
  readonly input: OipTensorSpec;
  readonly outputs: readonly OipTensorSpec[];
}

/**
 * A ModelInfer request after validation: `rows` are the input's B rows, each its own
 * [1, T] (INT64 ids) or [1, T, n_embd] (FP32) tensor owning its memory; `outputs` those asked
 * for, in the order asked (the model's when none were); `raw`: the request sent raw contents,
 * so the response does too.
 */
export interface ValidInfer {
  readonly model: OipModel;
  readonly id: string;
  readonly rows: readonly HostTensor[];
  /** T: positions of each row. */
  readonly tokens: number;
  readonly outputs: readonly OipTensorSpec[];
  readonly raw: boolean;
}

/** What the models are made of: the engine's model and the executor's limits. */
export interface OipModelsOptions {
  /** The executor's model id: the whole model's name. */
  readonly modelId: string;
  readonly stageCount: number;
  readonly nEmbd: number;
  readonly vocabSize: number;
  /** Most positions one row may have (the executor's context). */
  readonly maxContextTokens: number;
  /** Most rows (B) one request may have. */
  readonly maxRows: number;
  /** Largest gRPC message the executor sends: a response that would not fit is refused up front. */
  readonly maxMessageBytes: number;
}

/** Bytes of one element of a datatype. */
const ELEMENT_BYTES: Record<OipDatatype, number> = { INT64: 8, FP32: 4 };
/** The InferTensorContents list of a datatype, by its proto name. */
const CONTENTS_FIELD: Record<OipDatatype, 'int64_contents' | 'fp32_contents'> = { INT64: 'int64_contents', FP32: 'fp32_contents' };
/** The proto name of each InferTensorContents list. */
const PROTO_LIST_NAMES: readonly [keyof InferTensorContents, string][] = [
  ['boolContents', 'bool_contents'],
  ['intContents', 'int_contents'],
  ['int64Contents', 'int64_contents'],
  ['uintContents', 'uint_contents'],
  ['uint64Contents', 'uint64_contents'],
  ['fp32Contents', 'fp32_contents'],
  ['fp64Contents', 'fp64_contents'],
  ['bytesContents', 'bytes_contents'],
];
/** Room left in a response for everything but the tensors' values (names, shapes, framing), bytes. */
const RESPONSE_OVERHEAD_BYTES = 4096;
/** A stage range model's name after the model id: `/stages/<begin>-<end>`. */
const RANGE_NAME = /^\/stages\/(0|[1-9]\d{0,5})-([1-9]\d{0,5})$/;

/**
 * The models the executor serves through the Open Inference Protocol, and the validation of
 * requests against them (pure: no I/O, no state). Names: the executor's model id for the whole
 * model; `<model id>/stages/<begin>-<end>` for each stage range. Every version is
 * {@link OIP_MODEL_VERSION} (an empty version means it). Messages name the request's field by
 * its proto name, the rule and the value given (values cut: gRPC C-core clients refuse trailers
 * over 8 KiB).
 */
export class OipModels {
  constructor(private readonly opts: OipModelsOptions) {}

  /** The whole model's name. */
  get wholeName(): string {
    return this.opts.modelId;
  }

  /**
   * The model `name` at `version`; `nameField`/`versionField` are how the request calls them.
   * @throws ModelNotFoundError (NOT_FOUND) naming what is served.
   */
  resolve(name: string, version: string, nameField: string, versionField: string): OipModel {
    const { modelId, stageCount } = this.opts;
    const model = this.model(name);
    if (!model) {
      throw new ModelNotFoundError(
        `${nameField} must be '${modelId}' (the model served) or '${modelId}/stages/<begin>-<end>' with 0 <= begin < end <= ${stageCount}, given ${quoted(name)}`,
      );
    }
    if (version !== '' && version !== OIP_MODEL_VERSION)
      throw new ModelNotFoundError(`${versionField} must be '${OIP_MODEL_VERSION}' or empty (model ${quoted(name)} has one version), given ${quoted(version)}`);
    return model;
  }

  /** The model named `name`, or undefined when none is. */
  private model(name: string): OipModel | undefined {
    const { modelId, stageCount, nEmbd, vocabSize } = this.opts;
    if (name === modelId) {
      return {
        name,
        begin: 0,
        end: stageCount,
        whole: true,
        input: { name: 'input_ids', datatype: 'INT64', shape: [-1, -1] },
        outputs: [
          { name: 'next_token', datatype: 'INT64', shape: [-1, 1] },
          { name: 'logits', datatype: 'FP32', shape: [-1, vocabSize] },
        ],
      };
    }
    if (!name.startsWith(modelId)) return undefined;
    const m = RANGE_NAME.exec(name.slice(modelId.length));
    if (!m) return undefined;
    const begin = Number(m[1]);
    const end = Number(m[2]);
    if (!(begin < end && end <= stageCount)) return undefined;
    return {
      name,
      begin,
      end,
      whole: false,
      input: begin === 0 ? { name: 'input_ids', datatype: 'INT64', shape: [-1, -1] } : { name: 'hidden_states', datatype: 'FP32', shape: [-1, -1, nEmbd] },
      outputs: [
        end === stageCount
          ? { name: 'logits', datatype: 'FP32', shape: [-1, -1, vocabSize] }
          : { name: 'hidden_states', datatype: 'FP32', shape: [-1, -1, nEmbd] },
      ],
    };
  }

  /** ModelMetadata's answer for `model`. */
  metadata(model: OipModel): ModelMetadataResponse {
    const meta = (t: OipTensorSpec): ModelMetadataResponse['inputs'][number] => ({ name: t.name, datatype: t.datatype, shape: [...t.shape] });
    return { name: model.name, versions: [OIP_MODEL_VERSION], platform: OIP_PLATFORM, inputs: [meta(model.input)], outputs: model.outputs.map(meta) };
  }

  /**
   * Checks a ModelInfer request and splits its input into rows.
   * @throws ModelNotFoundError (NOT_FOUND) for a model or version not served; ValidationError
   *   (INVALID_ARGUMENT) naming the field, the rule and the value for anything else.
   */
  validate(req: ModelInferRequest): ValidInfer {
    const model = this.resolve(req.modelName, req.modelVersion, 'model_name', 'model_version');
    const spec = model.input;
    if (req.inputs.length !== 1) throw new ValidationError(`inputs must hold 1 tensor ('${spec.name}'), given ${req.inputs.length}`);
    const input = req.inputs[0];
    if (input.name !== spec.name) throw new ValidationError(`inputs[0].name must be '${spec.name}', given ${quoted(input.name)}`);
    if (input.datatype !== spec.datatype)
      throw new ValidationError(`inputs[0].datatype must be '${spec.datatype}' for '${spec.name}', given ${quoted(input.datatype)}`);
    const shape = input.shape;
    const { rows, tokens } = this.checkShape(shape, spec);
    const count = rows * tokens * (spec.datatype === 'FP32' ? this.opts.nEmbd : 1);
    const raw = req.rawInputContents.length > 0;
    const data = raw ? this.rawValues(req, spec, shape, count) : this.typedValues(input.contents, spec, shape, count);
    if (data instanceof BigInt64Array) this.checkIds(data, spec.name);
    else {
      // NaN or ±Infinity would run through every stage and give outputs computed from nothing.
      const bad = firstNonFinite(data);
      if (bad >= 0) throw new ValidationError(`inputs[0] ('${spec.name}') must hold finite FP32 values, given ${data[bad]} at index ${bad}`);
    }
    const outputs = this.requestedOutputs(req, model);
    this.checkResponseSize(model, outputs, rows, tokens);
    return { model, id: req.id, rows: splitRows(data, rows, tokens, this.opts.nEmbd), tokens, outputs, raw };
  }

  /** B and T of an input of shape `shape`. */
  private checkShape(shape: readonly number[], spec: OipTensorSpec): { rows: number; tokens: number } {
    const { maxRows, maxContextTokens, nEmbd } = this.opts;
    const hidden = spec.datatype === 'FP32';
    const rule = hidden ? `[B, T, ${nEmbd}] with 1 <= B <= ${maxRows}, T >= 1` : `[B, T] with 1 <= B <= ${maxRows}, T >= 1`;
    const ok =
      shape.length === (hidden ? 3 : 2) &&
      shape[0] >= 1 &&
      shape[0] <= maxRows &&
      Number.isSafeInteger(shape[1]) &&
      shape[1] >= 1 &&
      (!hidden || shape[2] === nEmbd);
    if (!ok) throw new ValidationError(`inputs[0].shape must be ${rule}, given ${renderShape(shape)}`);
    if (shape[1] > maxContextTokens)
      throw new ValidationError(`inputs[0].shape[1] (tokens) must be <= ${maxContextTokens} (the executor's context), given ${shape[1]}`);
    return { rows: shape[0], tokens: shape[1] };
  }

  /** The input's values from raw_input_contents[0], copied into memory of their own. */
  private rawValues(req: ModelInferRequest, spec: OipTensorSpec, shape: readonly number[], count: number): BigInt64Array | Float32Array {
    if (req.rawInputContents.length !== req.inputs.length)
      throw new ValidationError(`raw_input_contents must hold one entry per input (${req.inputs.length}), given ${req.rawInputContents.length}`);
    const typed = setLists(req.inputs[0].contents);
    if (typed.length > 0) throw new ValidationError(`inputs[0].contents must be empty when raw_input_contents is used, given ${typed[0]}`);
    const bytes = req.rawInputContents[0];
    const size = ELEMENT_BYTES[spec.datatype];
    if (bytes.byteLength !== count * size)
      throw new ValidationError(
        `raw_input_contents[0] must hold ${count * size} bytes (${spec.datatype} ${renderShape(shape)}, ${size} bytes each), given ${bytes.byteLength}`,
      );
    // A copy (aligned, owned): received bytes may sit at any offset of a shared buffer.
    const copy = new ArrayBuffer(count * size);
    new Uint8Array(copy).set(bytes);
    return spec.datatype === 'INT64' ? new BigInt64Array(copy) : new Float32Array(copy);
  }

  /** The input's values from inputs[0].contents (the list of its datatype and no other). */
  private typedValues(contents: InferTensorContents | undefined, spec: OipTensorSpec, shape: readonly number[], count: number): BigInt64Array | Float32Array {
    const field = CONTENTS_FIELD[spec.datatype];
    const other = setLists(contents).find((f) => f !== field);
    if (other) throw new ValidationError(`inputs[0].contents must carry ${field} only (datatype ${spec.datatype}), given ${other}`);
    const list = (spec.datatype === 'INT64' ? contents?.int64Contents : contents?.fp32Contents) ?? [];
    if (list.length !== count)
      throw new ValidationError(
        `inputs[0].contents.${field} must hold ${count} values (shape ${renderShape(shape)}; or send raw_input_contents), given ${list.length}`,
      );
    return spec.datatype === 'INT64' ? BigInt64Array.from(list, (v) => BigInt(v)) : Float32Array.from(list);
  }

  /** @throws ValidationError naming the input when a token id is outside the vocabulary. */
  private checkIds(ids: BigInt64Array, name: string): void {
    const vocab = BigInt(this.opts.vocabSize);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id < 0n || id >= vocab)
        throw new ValidationError(`inputs[0] ('${name}') token ids must be in 0..${this.opts.vocabSize - 1}, given ${id} at index ${i}`);
    }
  }

  /** The outputs asked for, in the order asked; every output of the model when none were. */
  private requestedOutputs(req: ModelInferRequest, model: OipModel): OipTensorSpec[] {
    if (req.outputs.length === 0) return [...model.outputs];
    const names = model.outputs.map((o) => `'${o.name}'`).join(', ');
    const picked: OipTensorSpec[] = [];
    req.outputs.forEach((o, i) => {
      const spec = model.outputs.find((s) => s.name === o.name);
      if (!spec) throw new ValidationError(`outputs[${i}].name must be one of ${names}, given ${quoted(o.name)}`);
      if (picked.includes(spec)) throw new ValidationError(`outputs[${i}].name must not repeat an earlier output, given ${quoted(o.name)}`);
      picked.push(spec);
    });
    return picked;
  }

  /** @throws ValidationError when the outputs' values alone would exceed the largest message the executor sends. */
  private checkResponseSize(model: OipModel, outputs: readonly OipTensorSpec[], rows: number, tokens: number): void {
    let bytes = 0;
    for (const o of outputs) {
      // A typed INT64 value takes up to 10 bytes (a varint); FP32 4 either way.
      if (o.datatype === 'INT64') bytes += rows * 10;
      else bytes += rows * (model.whole ? 1 : tokens) * o.shape[o.shape.length - 1] * 4;
    }
    const limit = this.opts.maxMessageBytes - RESPONSE_OVERHEAD_BYTES;
    if (bytes > limit)
      throw new ValidationError(
        `outputs must fit in one message of ${this.opts.maxMessageBytes} bytes (EXECUTOR_MAX_MESSAGE_BYTES), given a request whose outputs take ${bytes}: send fewer rows or tokens, or ask for fewer outputs`,
      );
  }
}

/** The proto names of the InferTensorContents lists that hold values. */
function setLists(c: InferTensorContents | undefined): string[] {
  if (!c) return [];
  return PROTO_LIST_NAMES.filter(([k]) => (c[k] as unknown[]).length > 0).map(([, name]) => name);
}

/** `data` (B rows of T positions of `width` values, row-major) as B tensors [1, T] or [1, T, width], each owning its memory. */
function splitRows(data: BigInt64Array | Float32Array, rows: number, tokens: number, nEmbd: number): HostTensor[] {
  const out: HostTensor[] = [];
  const ids = data instanceof BigInt64Array;
  const per = tokens * (ids ? 1 : nEmbd);
  for (let b = 0; b < rows; b++) {
    const part = rows === 1 ? data : data.slice(b * per, (b + 1) * per);
    out.push(part instanceof BigInt64Array ? { dtype: 'int64', shape: [1, tokens], data: part } : { dtype: 'float32', shape: [1, tokens, nEmbd], data: part });
  }
  return out;
}
