"""A Tandem model directory read with numpy, and its stages computed in numpy.

The directory format is docs/model.md's: `manifest.json` lists the stages (embed, an attention
and an MLP stage per block, the head), each an ONNX graph whose weights are ONNX external data
(`location` relative to the .onnx file, `offset`, `length`). This module reads the graphs'
initializers with a small protobuf reader of its own (the `onnx` package is not needed), loads
the weights with numpy, and computes the stages as the graphs define them:

- embed:   wte[ids] + wpe[positions]
- attn i:  h + c_proj(Attention(split(c_attn(LayerNorm_1(h)))))   causal, with a KV cache
- mlp i:   h + c_proj(gelu_tanh(c_fc(LayerNorm_2(h))))
- head:    LayerNorm_f(h) @ wte^T

The embed stage is exact (a gather and one float32 addition, as onnxruntime does); the others
agree with onnxruntime within float32 rounding, which leaves greedy tokens unchanged unless two
logits tie within about 1e-5.
"""

import hashlib
import json
import os

import numpy as np

FORMAT = "tandem-model/1"


class ModelError(Exception):
    """The model directory is not one this module can read; names the file or field."""


# --- a minimal protobuf wire reader (enough for ONNX ModelProto initializers) --------------

def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ModelError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ModelError("varint longer than 10 bytes")


def _fields(buf):
    """Yields (field number, wire type, value): an int for varints and fixed, a memoryview for bytes."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = _varint(buf, pos)
        elif wt == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ModelError("truncated length-delimited field %d" % field)
            value, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ModelError("unsupported wire type %d (field %d)" % (wt, field))
        yield field, wt, value


# ONNX field numbers (onnx.proto): ModelProto.graph = 7; GraphProto.initializer = 5;
# TensorProto: dims = 1, data_type = 2, float_data = 4, name = 8, raw_data = 9,
# external_data = 13 (StringStringEntryProto: key = 1, value = 2).
_FLOAT = 1


def _initializers(onnx_path):
    """{name: (dims, raw bytes or None, external {key: value})} of the graph's initializers."""
    with open(onnx_path, "rb") as f:
        model = memoryview(f.read())
    out = {}
    for field, wt, graph in _fields(model):
        if field != 7 or wt != 2:
            continue
        for gf, gwt, tensor in _fields(graph):
            if gf != 5 or gwt != 2:
                continue
            dims, name, dtype, raw, floats, ext = [], "", 0, None, None, {}
            for tf, twt, v in _fields(tensor):
                if tf == 1:
                    if twt == 2:  # packed
                        p = 0
                        while p < len(v):
                            d, p = _varint(v, p)
                            dims.append(d)
                    else:
                        dims.append(v)
                elif tf == 2:
                    dtype = v
                elif tf == 4 and twt == 2:
                    floats = np.frombuffer(bytes(v), dtype="<f4")
                elif tf == 8:
                    name = bytes(v).decode()
                elif tf == 9:
                    raw = bytes(v)
                elif tf == 13:
                    k = val = ""
                    for ef, _, ev in _fields(v):
                        if ef == 1:
                            k = bytes(ev).decode()
                        elif ef == 2:
                            val = bytes(ev).decode()
                    ext[k] = val
            out[name] = (dims, dtype, raw, floats, ext)
    return out


def _load_tensor(onnx_path, name, entry):
    dims, dtype, raw, floats, ext = entry
    if dtype != _FLOAT:
        raise ModelError("%s: initializer %s is not float32 (data_type %d)" % (onnx_path, name, dtype))
    count = int(np.prod(dims)) if dims else 1
    if ext:
        location = ext.get("location", "")
        offset = int(ext.get("offset", "0"))
        length = int(ext.get("length", str(count * 4)))
        if length != count * 4:
            raise ModelError("%s: initializer %s: external length %d does not match dims %s" % (onnx_path, name, length, dims))
        data_path = os.path.join(os.path.dirname(onnx_path), location)
        try:
            arr = np.fromfile(data_path, dtype="<f4", count=count, offset=offset)
        except OSError as err:
            raise ModelError("%s: initializer %s: cannot read %s: %s" % (onnx_path, name, data_path, err.strerror))
        if arr.size != count:
            raise ModelError("%s: initializer %s: %s ends before offset %d + %d bytes" % (onnx_path, name, data_path, offset, length))
    elif raw is not None:
        arr = np.frombuffer(raw, dtype="<f4")
    elif floats is not None:
        arr = floats
    else:
        raise ModelError("%s: initializer %s has no data" % (onnx_path, name))
    return arr.astype(np.float32, copy=False).reshape(dims)


# --- the model ------------------------------------------------------------------------------

def model_id(model_dir):
    """The model's id as Tandem computes it: the first 16 hex digits of SHA-256 of manifest.json."""
    with open(os.path.join(model_dir, "manifest.json"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class Model:
    """A model directory: its config, its stage list and, loaded on demand, stage weights."""

    def __init__(self, model_dir):
        path = os.path.join(model_dir, "manifest.json")
        try:
            with open(path, "rb") as f:
                manifest = json.loads(f.read())
        except OSError as err:
            raise ModelError("%s: cannot read: %s" % (path, err.strerror))
        except ValueError as err:
            raise ModelError("%s: not JSON: %s" % (path, err))
        if manifest.get("format") != FORMAT:
            raise ModelError("%s: format must be %r, given %r" % (path, FORMAT, manifest.get("format")))
        if manifest.get("family") != "gpt2":
            raise ModelError("%s: family must be 'gpt2', given %r" % (path, manifest.get("family")))
        c = manifest.get("config") or {}
        try:
            self.vocab_size = int(c["vocabSize"])
            self.n_positions = int(c["nPositions"])
            self.n_embd = int(c["nEmbd"])
            self.n_layer = int(c["nLayer"])
            self.n_head = int(c["nHead"])
            self.eps = float(c["layerNormEpsilon"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError("%s: config.%s is missing or not a number" % (path, err))
        self.dir = model_dir
        self.stages = manifest.get("stages") or []
        if len(self.stages) != 2 * self.n_layer + 2:
            raise ModelError("%s: stages must list 2*nLayer+2 = %d stages, given %d" % (path, 2 * self.n_layer + 2, len(self.stages)))
        self.id = model_id(model_dir)
        self._weights = {}

    @property
    def stage_count(self):
        return len(self.stages)

    def weights(self, index):
        """{name: float32 array} of stage `index`, read once."""
        if index not in self._weights:
            stage = self.stages[index]
            onnx_path = os.path.join(self.dir, stage["file"])
            try:
                inits = _initializers(onnx_path)
            except OSError as err:
                raise ModelError("%s: cannot read: %s" % (onnx_path, err.strerror))
            self._weights[index] = {n: _load_tensor(onnx_path, n, e) for n, e in inits.items() if e[1] == _FLOAT}
        return self._weights[index]

    def weight(self, index, name):
        w = self.weights(index)
        if name not in w:
            raise ModelError("stage %s (%s) has no weight %s" % (index, self.stages[index].get("name"), name))
        return w[name]


def layer_norm(x, w, b, eps):
    # Mean and variance in float64, then float32, as precise as onnxruntime's or more.
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    return (((x64 - mean) / np.sqrt(var + eps)) * w + b).astype(np.float32)


def gelu_tanh(x):
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64 ** 3)))).astype(np.float32)


class ClientStages:
    """The stages a client runs here in numpy: embed, the first `blocks` blocks, and the head.

    One instance is one generation: it keeps the embed position counter and the KV cache of its
    attention stages (the server keeps its own for the stages it runs; every token passes every
    stage once, so the counts agree).
    """

    def __init__(self, model, blocks):
        if not 0 <= blocks <= model.n_layer:
            raise ValueError("blocks must be 0..%d, given %d" % (model.n_layer, blocks))
        self.m = model
        self.blocks = blocks
        self.position = 0
        self.cache = [(np.zeros((model.n_head, 0, model.n_embd // model.n_head), np.float32),) * 2 for _ in range(blocks)]
        # Load every weight now, so a bad model fails before the session opens.
        for i in list(range(0, 2 * blocks + 1)) + [model.stage_count - 1]:
            model.weights(i)

    def embed(self, ids):
        """hidden [1, T, D] of token ids at the next T positions."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.arange(self.position, self.position + len(ids))
        self.position += len(ids)
        wte = self.m.weight(0, "wte.weight")
        wpe = self.m.weight(0, "wpe.weight")
        return (wte[ids] + wpe[pos])[None, :, :]

    def block(self, layer, h):
        """Runs block `layer` (its attention then its MLP stage) on hidden [1, T, D]."""
        m = self.m
        a, p = 1 + 2 * layer, "h.%d" % layer
        D, H = m.n_embd, m.n_head
        Dh = D // H
        x = layer_norm(h[0], m.weight(a, p + ".ln_1.weight"), m.weight(a, p + ".ln_1.bias"), m.eps)
        qkv = x @ m.weight(a, p + ".attn.c_attn.weight") + m.weight(a, p + ".attn.c_attn.bias")
        T = qkv.shape[0]
        q, k, v = (qkv[:, i * D:(i + 1) * D].reshape(T, H, Dh).transpose(1, 0, 2) for i in range(3))
        past_k, past_v = self.cache[layer]
        k = np.concatenate([past_k, k], axis=1)
        v = np.concatenate([past_v, v], axis=1)
        self.cache[layer] = (k, v)
        P = past_k.shape[1]
        scores = (q.astype(np.float64) @ k.astype(np.float64).transpose(0, 2, 1)) / np.sqrt(Dh)
        # Causal, aligned to the end of the keys: query t (position P+t) sees keys 0..P+t.
        mask = np.arange(P + T)[None, :] > (P + np.arange(T))[:, None]
        scores = np.where(mask[None, :, :], -np.inf, scores)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        att = (scores / scores.sum(axis=-1, keepdims=True)) @ v.astype(np.float64)
        y = att.transpose(1, 0, 2).reshape(T, D).astype(np.float32)
        h1 = h[0] + (y @ m.weight(a, p + ".attn.c_proj.weight") + m.weight(a, p + ".attn.c_proj.bias"))
        f = a + 1
        x = layer_norm(h1, m.weight(f, p + ".ln_2.weight"), m.weight(f, p + ".ln_2.bias"), m.eps)
        up = gelu_tanh(x @ m.weight(f, p + ".mlp.c_fc.weight") + m.weight(f, p + ".mlp.c_fc.bias"))
        h2 = h1 + (up @ m.weight(f, p + ".mlp.c_proj.weight") + m.weight(f, p + ".mlp.c_proj.bias"))
        return h2[None, :, :].astype(np.float32)

    def front(self, ids):
        """embed and the client's blocks: the hidden state [1, T, D] sent to the server."""
        h = self.embed(ids)
        for layer in range(self.blocks):
            h = self.block(layer, h)
        return h

    def head_token(self, h):
        """The greedy token of the last position of hidden [1, T, D]."""
        m = self.m
        last = m.stage_count - 1
        x = layer_norm(h[0, -1:, :], m.weight(last, "ln_f.weight"), m.weight(last, "ln_f.bias"), m.eps)
        # float32 like the head graph's Gemm (a float64 copy of wte would double its memory).
        logits = x @ m.weight(last, "wte.weight").T
        return int(np.argmax(logits[0]))
