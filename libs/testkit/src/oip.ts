/**
 * What an executor's Open Inference Protocol ModelMetadata says of its whole model `modelId`
 * (version 1, onnxruntime), to whichever client asks: token ids in, the next token and the
 * logits over the `vocabSize` ids out.
 */
export function wholeModelMetadata(modelId: string, vocabSize: number): object {
  return {
    name: modelId,
    versions: ['1'],
    platform: 'onnxruntime_onnx',
    inputs: [{ name: 'input_ids', datatype: 'INT64', shape: [-1, -1] }],
    outputs: [
      { name: 'next_token', datatype: 'INT64', shape: [-1, 1] },
      { name: 'logits', datatype: 'FP32', shape: [-1, vocabSize] },
    ],
  };
}
