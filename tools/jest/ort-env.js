'use strict';
// onnxruntime-node checks `data instanceof Float32Array` against the host realm; jest runs tests in a
// vm realm with its own typed-array constructors. Share the host's so tensors cross the boundary.
const { TestEnvironment } = require('jest-environment-node');
const SHARED = [
  'ArrayBuffer',
  'SharedArrayBuffer',
  'DataView',
  'Int8Array',
  'Uint8Array',
  'Uint8ClampedArray',
  'Int16Array',
  'Uint16Array',
  'Int32Array',
  'Uint32Array',
  'Float32Array',
  'Float64Array',
  'BigInt64Array',
  'BigUint64Array',
];
module.exports = class OrtTestEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    for (const k of SHARED) this.global[k] = globalThis[k];
  }
};
