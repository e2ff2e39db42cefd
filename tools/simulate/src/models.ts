import type { TransformerShape } from '@tandem/dp';

/** A model of the SplitLLM evaluation: its shape, the paper's family name and the sequence lengths swept. */
export interface SimulatedModel {
  readonly shape: TransformerShape;
  /** The family the paper reports per-model numbers for. */
  readonly family: 'Transformer' | 'BERT' | 'GPT-2' | 'ViT';
  /** Sequence lengths swept (bounded by the model's positions; ViT-B/16 at 224 px always has 197). */
  readonly seqLens: readonly number[];
  /** Whether the model generates (decoder-only), so `--decode-steps` applies to it. */
  readonly generative: boolean;
}

const lm = { inputBytesPerToken: 8, embedFlopsPerToken: 0, headKind: 'lm', activationBytes: 4 } as const;

/** A BERT encoder of `layers` layers classifying into two classes, over sequences of up to 512 tokens. */
function bert(name: string, dModel: number, dFF: number, layers: number): SimulatedModel {
  return {
    shape: { ...lm, name, dModel, dFF, encoderLayers: layers, decoderLayers: 0, crossAttention: false, headKind: 'classifier', headOutputs: 2 },
    family: 'BERT',
    seqLens: [128, 256, 512],
    generative: false,
  };
}

/** The six model shapes, at their published sizes. */
export const SIMULATED_MODELS: readonly SimulatedModel[] = [
  {
    // Vaswani et al. base: 6 encoder + 6 decoder layers, d 512, FFN 2048, shared 37k BPE vocabulary.
    shape: { ...lm, name: 'transformer-base', dModel: 512, dFF: 2048, encoderLayers: 6, decoderLayers: 6, crossAttention: true, headOutputs: 37000 },
    family: 'Transformer',
    seqLens: [128, 256, 512, 1024],
    generative: false,
  },
  bert('bert-base', 768, 3072, 12),
  bert('bert-large', 1024, 4096, 24),
  {
    shape: { ...lm, name: 'gpt2-small', dModel: 768, dFF: 3072, encoderLayers: 0, decoderLayers: 12, crossAttention: false, headOutputs: 50257 },
    family: 'GPT-2',
    seqLens: [128, 256, 512, 1024],
    generative: true,
  },
  {
    shape: { ...lm, name: 'gpt2-medium', dModel: 1024, dFF: 4096, encoderLayers: 0, decoderLayers: 24, crossAttention: false, headOutputs: 50257 },
    family: 'GPT-2',
    seqLens: [128, 256, 512, 1024],
    generative: true,
  },
  {
    // 224×224 RGB image as 196 uint8 patches of 16×16×3 = 768 bytes, plus the class token;
    // the embed stage is the patch projection (2·768·768 FLOPs per patch).
    shape: {
      name: 'vit-b16',
      dModel: 768,
      dFF: 3072,
      encoderLayers: 12,
      decoderLayers: 0,
      crossAttention: false,
      inputBytesPerToken: 768,
      embedFlopsPerToken: 2 * 768 * 768,
      headKind: 'classifier',
      headOutputs: 1000,
      activationBytes: 4,
    },
    family: 'ViT',
    seqLens: [197],
    generative: false,
  },
];

/** The paper's headline and per-family figures (fractions). `null`: not recovered. */
export const PAPER_RESULTS = {
  /** Abstract: "roughly 1/3 reduction in the server workload" and "19 percent improvement over a greedy method". */
  overall: { dpVsServerOnly: 1 / 3, dpOverGreedy: 0.19 },
  /** Per family, from a secondary summary of the paper's figures (unverified). */
  families: {
    Transformer: { dpVsServerOnly: 0.289, dpOverGreedy: 0.146 },
    BERT: { dpVsServerOnly: 0.278, dpOverGreedy: 0.055 },
    'GPT-2': { dpVsServerOnly: 0.292, dpOverGreedy: 0.125 },
    ViT: { dpVsServerOnly: null, dpOverGreedy: 0.554 },
  },
} as const;
