import { onnx } from 'onnx-proto';

const DT = onnx.TensorProto.DataType;
const AT = onnx.AttributeProto.AttributeType;

/** The ONNX opset every stage graph imports (the `Attention` op needs 23; LayerNormalization 17, Gelu 20). */
export const OPSET = 23;
/** ONNX IR version written; onnxruntime accepts opset 23 with IR 8. */
export const IR_VERSION = 8;

/** A float32 initializer stored in an external data file beside the .onnx file. */
export interface ExternalRef {
  /** Data file name relative to the .onnx file's directory (never absolute, so models can move). */
  readonly location: string;
  readonly offset: number;
  readonly length: number;
}

type AttrValue = number | string | readonly number[] | { readonly float: number };

/** A dimension: a fixed size or a symbolic name (`batch`, `seq`, ...). */
export type Dim = number | string;

function valueInfo(name: string, elemType: number, shape: readonly Dim[]): onnx.IValueInfoProto {
  return {
    name,
    type: { tensorType: { elemType, shape: { dim: shape.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) } } },
  };
}

function attribute(name: string, v: AttrValue): onnx.IAttributeProto {
  if (typeof v === 'object' && !Array.isArray(v) && 'float' in v) return { name, type: AT.FLOAT, f: v.float };
  if (typeof v === 'number') return Number.isInteger(v) ? { name, type: AT.INT, i: v } : { name, type: AT.FLOAT, f: v };
  if (typeof v === 'string') return { name, type: AT.STRING, s: Buffer.from(v) };
  return { name, type: AT.INTS, ints: [...(v as readonly number[])] };
}

/**
 * Builds one ONNX graph. Node and value names are derived from a counter, so the same calls give
 * byte-identical models (no timestamps, no paths).
 */
export class GraphBuilder {
  private readonly nodes: onnx.INodeProto[] = [];
  private readonly inits: onnx.ITensorProto[] = [];
  private readonly inputs: onnx.IValueInfoProto[] = [];
  private readonly outputs: onnx.IValueInfoProto[] = [];
  private counter = 0;

  constructor(private readonly graphName: string) {}

  private fresh(hint: string): string {
    return `${hint}_${this.counter++}`;
  }

  /** Declares a float32 graph input. */
  inputF32(name: string, shape: readonly Dim[]): string {
    this.inputs.push(valueInfo(name, DT.FLOAT, shape));
    return name;
  }

  /** Declares an int64 graph input. */
  inputI64(name: string, shape: readonly Dim[]): string {
    this.inputs.push(valueInfo(name, DT.INT64, shape));
    return name;
  }

  /** Declares a float32 graph output produced by value `from` (renamed through Identity when needed). */
  outputF32(name: string, from: string, shape: readonly Dim[]): string {
    if (from !== name) this.nodes.push({ opType: 'Identity', domain: '', input: [from], output: [name], name: this.fresh('n_Identity') });
    this.outputs.push(valueInfo(name, DT.FLOAT, shape));
    return name;
  }

  /** A float32 initializer whose bytes live in an external data file. */
  externalF32(name: string, dims: readonly number[], ref: ExternalRef): string {
    this.inits.push({
      name,
      dataType: DT.FLOAT,
      dims: [...dims],
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: ref.location },
        { key: 'offset', value: String(ref.offset) },
        { key: 'length', value: String(ref.length) },
      ],
    });
    return name;
  }

  /** A small int64 constant stored inline. */
  constI64(values: readonly number[], dims: readonly number[] = [values.length]): string {
    const name = this.fresh('c');
    this.inits.push({ name, dataType: DT.INT64, dims: [...dims], rawData: Buffer.from(BigInt64Array.from(values.map(BigInt)).buffer) });
    return name;
  }

  /** Adds a node; returns its output names (one string when `nOut` is 1). Pass '' for an omitted optional input. */
  op(opType: string, input: readonly string[], attrs: Record<string, AttrValue> = {}, nOut = 1): string[] {
    const output = Array.from({ length: nOut }, () => this.fresh(opType));
    this.nodes.push({
      opType,
      domain: '',
      input: [...input],
      output,
      name: this.fresh(`n_${opType}`),
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return output;
  }

  /** Single-output convenience for {@link op}. */
  op1(opType: string, input: readonly string[], attrs: Record<string, AttrValue> = {}): string {
    return this.op(opType, input, attrs, 1)[0];
  }

  /** Serialises the model (opset {@link OPSET}, IR {@link IR_VERSION}). */
  encode(): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: IR_VERSION,
      producerName: 'tandem-model',
      producerVersion: '1',
      opsetImport: [{ domain: '', version: OPSET }],
      graph: { name: this.graphName, node: this.nodes, initializer: this.inits, input: this.inputs, output: this.outputs },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
