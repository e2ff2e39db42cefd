#!/usr/bin/env python3
"""A KServe v2 / Open Inference Protocol client that is not Tandem's own.

It speaks to an executor through stubs compiled by protoc from proto/inference/grpc_predict_v2.proto
(grpcio, protobuf and numpy as Debian ships them), the way a Triton or KServe user would, and
prints one JSON object with what it saw; e2e/test/kserve-python.int.spec.ts runs it and checks it.

Usage: kserve_check.py --stubs DIR --addr HOST:PORT --model MODEL_ID --prompt 464,2068,7586 --cut 3
  DIR holds inference/grpc_predict_v2_pb2.py and inference/grpc_predict_v2_pb2_grpc.py:
  protoc -I proto --python_out=DIR --grpc_out=DIR \
    --plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin proto/inference/grpc_predict_v2.proto
"""

import argparse
import base64
import json
import sys

import grpc
import numpy as np


def tensor_meta(tensors):
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]


def raw_outputs(response):
    """The response's outputs as numpy arrays, from raw_output_contents (little-endian, row-major)."""
    dtypes = {"INT64": "<i8", "FP32": "<f4"}
    return {
        o.name: np.frombuffer(raw, dtype=dtypes[o.datatype]).reshape(list(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents)
    }


def refusal(call):
    """The status code name and message of a call that must fail."""
    try:
        call()
    except grpc.RpcError as err:
        return {"code": err.code().name, "details": err.details()}
    return {"code": "OK", "details": ""}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stubs", required=True, help="directory of the compiled stubs")
    ap.add_argument("--addr", required=True, help="executor host:port")
    ap.add_argument("--model", required=True, help="the executor's model id")
    ap.add_argument("--prompt", required=True, help="token ids, comma-separated")
    ap.add_argument("--cut", type=int, required=True, help="stage where the chained ranges meet")
    ap.add_argument("--stages", type=int, required=True, help="the model's stage count")
    args = ap.parse_args()
    sys.path.insert(0, args.stubs)
    from inference import grpc_predict_v2_pb2 as pb  # noqa: E402 (compiled at run time)
    from inference import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402

    prompt = np.array([[int(t) for t in args.prompt.split(",")]], dtype="<i8")
    out = {}
    with grpc.insecure_channel(args.addr) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        out["live"] = stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        out["ready"] = stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
        out["server"] = {"name": server.name, "version": server.version}
        out["model_ready"] = stub.ModelReady(pb.ModelReadyRequest(name=args.model, version="1"), timeout=10).ready
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model), timeout=10)
        out["metadata"] = {
            "name": meta.name,
            "versions": list(meta.versions),
            "platform": meta.platform,
            "inputs": tensor_meta(meta.inputs),
            "outputs": tensor_meta(meta.outputs),
        }

        # The whole model, raw contents in and out.
        request = pb.ModelInferRequest(model_name=args.model, id="py-1")
        ids = request.inputs.add(name="input_ids", datatype="INT64")
        ids.shape.extend(prompt.shape)
        request.raw_input_contents.append(prompt.tobytes())
        response = stub.ModelInfer(request, timeout=60)
        outputs = raw_outputs(response)
        out["infer"] = {
            "id": response.id,
            "model_name": response.model_name,
            "model_version": response.model_version,
            "next_token": int(outputs["next_token"][0, 0]),
            "next_token_shape": list(outputs["next_token"].shape),
            "logits_shape": list(outputs["logits"].shape),
            "logits_argmax": int(np.argmax(outputs["logits"][0])),
            "logits_base64": base64.b64encode(outputs["logits"].tobytes()).decode("ascii"),
        }

        # Typed contents, one output asked for.
        typed = pb.ModelInferRequest(model_name=args.model, outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="next_token")])
        t = typed.inputs.add(name="input_ids", datatype="INT64")
        t.shape.extend(prompt.shape)
        t.contents.int64_contents.extend(int(v) for v in prompt.flatten())
        typed_response = stub.ModelInfer(typed, timeout=60)
        out["typed"] = {
            "outputs": [o.name for o in typed_response.outputs],
            "next_token": list(typed_response.outputs[0].contents.int64_contents),
        }

        # Two stage ranges chained: token ids -> hidden states -> logits, every position.
        first = pb.ModelInferRequest(model_name=f"{args.model}/stages/0-{args.cut}")
        f = first.inputs.add(name="input_ids", datatype="INT64")
        f.shape.extend(prompt.shape)
        first.raw_input_contents.append(prompt.tobytes())
        hidden = raw_outputs(stub.ModelInfer(first, timeout=60))["hidden_states"]
        second = pb.ModelInferRequest(model_name=f"{args.model}/stages/{args.cut}-{args.stages}")
        s = second.inputs.add(name="hidden_states", datatype="FP32")
        s.shape.extend(hidden.shape)
        second.raw_input_contents.append(hidden.astype("<f4").tobytes())
        logits = raw_outputs(stub.ModelInfer(second, timeout=60))["logits"]
        out["chained"] = {
            "hidden_shape": list(hidden.shape),
            "logits_shape": list(logits.shape),
            "next_token": int(np.argmax(logits[0, -1])),
            "last_logits_base64": base64.b64encode(logits[0, -1].tobytes()).decode("ascii"),
        }

        # Refusals: an unknown model, raw bytes that do not match the shape.
        unknown = pb.ModelInferRequest(model_name="no-such-model")
        out["unknown_model"] = refusal(lambda: stub.ModelInfer(unknown, timeout=10))
        short = pb.ModelInferRequest(model_name=args.model)
        bad = short.inputs.add(name="input_ids", datatype="INT64")
        bad.shape.extend([1, 2])
        short.raw_input_contents.append(b"\x00" * 12)
        out["short_raw"] = refusal(lambda: stub.ModelInfer(short, timeout=10))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
