#!/usr/bin/env python3
"""A split generation against the Tandem server-executor, with this client's own stages in numpy.

The client runs the embedding, the first --client-blocks transformer blocks and (unless
--server-head) the head here, in numpy, from the same model directory the executor serves
(docs/model.md); the executor runs the blocks in between on its session stream
(tandem.executor.v1.ExecutorService.Session), one `step` per token: the hidden state goes up as
float32 [1, T, nEmbd], and the server's hidden state (or, with --server-head, its greedy token)
comes back. Greedy decoding: a prefill of the prompt, then one step per further token.

    examples/python/split.py --addr 127.0.0.1:50051 --model .tandem/models/small-1 \\
        --ids 464,2068,7586,21831 --max-new-tokens 8 --client-blocks 1

The prompt is token ids (GPT-2's; this example carries no tokenizer: generate.py sends text
through an agent). Output: one `token INDEX ID` line per token as it is made, then
`ids ID,ID,...`, `placement CCC...S...C` (one letter per stage, C = here) and
`summary steps=N server_compute_ms=X wall_ms=Y`; with --json, one JSON document.
With tokens on, --client-id must be the token's identity (or the token an operator's).
"""

import argparse
import json
import queue
import sys
import time

import numpy as np

import tandem_client as tc
import tandem_model as tm

PROG = "split.py"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="A split generation against the Tandem executor, client stages in numpy.")
    tc.add_connection_flags(p, "the server-executor's", "127.0.0.1:50051")
    p.add_argument("--model", required=True, metavar="DIR", help="the model directory the executor serves (manifest.json, stages/)")
    p.add_argument("--ids", required=True, type=tc.token_ids, help="prompt as comma-separated GPT-2 token ids")
    p.add_argument("--max-new-tokens", type=tc.positive_int(1 << 20), default=16, metavar="N", help="tokens to generate, >= 1 (default 16)")
    p.add_argument("--client-blocks", type=int, default=1, metavar="K",
                   help="transformer blocks run here after the embedding, 0..nLayer-1 (default 1)")
    p.add_argument("--server-head", action="store_true", help="run the head on the server (it sends the greedy token back)")
    p.add_argument("--client-id", default="python-example", help="open.client_id of the session (default python-example)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    args = p.parse_args(argv)
    try:
        model = tm.Model(args.model)
    except tm.ModelError as err:
        p.error("argument --model: %s" % err)
    top = model.n_layer if args.server_head else model.n_layer - 1
    if not 0 <= args.client_blocks <= top:
        p.error("argument --client-blocks: must be 0..%d (the server runs at least one stage), given %d" % (top, args.client_blocks))
    bad = [i for i in args.ids if i >= model.vocab_size]
    if bad:
        p.error("argument --ids: ids must be 0..%d (the model's vocabulary), given %d" % (model.vocab_size - 1, bad[0]))
    if len(args.ids) + args.max_new_tokens - 1 > model.n_positions:
        p.error("argument --max-new-tokens: prompt (%d) + max-new-tokens (%d) - 1 must be <= the model's context %d"
                % (len(args.ids), args.max_new_tokens, model.n_positions))
    if not args.client_id.strip():
        p.error("argument --client-id: must not be empty")
    return p, args, model


class Session:
    """One executor session: a bidirectional stream with requests fed from a queue."""

    def __init__(self, stub, args):
        self._requests = queue.Queue()
        self._responses = stub.Session(self._feed(), timeout=args.deadline_s, metadata=tc.call_metadata(args))

    def _feed(self):
        while True:
            msg = self._requests.get()
            if msg is None:
                return  # half-close: the server ends the stream with OK
            yield msg

    def send(self, msg):
        self._requests.put(msg)

    def recv(self, expecting):
        try:
            return next(self._responses)
        except StopIteration:
            raise tc.Failure("the executor ended the session while %s was expected" % expecting)

    def close(self):
        """Half-closes and waits for the stream to end."""
        self._requests.put(None)
        for msg in self._responses:
            raise tc.Failure("unexpected %s after the last step" % msg.WhichOneof("kind"))

    def cancel(self):
        self._requests.put(None)
        self._responses.cancel()


def main(p, args, model):
    (executor_pb2, executor_grpc, tensor_pb2) = tc.load_stubs(
        p, args, "tandem.executor.v1.executor_pb2", "tandem.executor.v1.executor_pb2_grpc", "tandem.tensor.v1.tensor_pb2")
    n = model.stage_count
    client = tm.ClientStages(model, args.client_blocks)
    begin = 1 + 2 * args.client_blocks
    end = n if args.server_head else n - 1
    placement = "".join("S" if begin <= i < end else "C" for i in range(n))
    t0 = time.perf_counter()
    ids, server_ms, steps = [], 0.0, 0
    with tc.open_channel(p, args) as channel:
        session = Session(executor_grpc.ExecutorServiceStub(channel), args)
        try:
            # The executor refuses the session (FAILED_PRECONDITION) if it serves another model.
            session.send(executor_pb2.SessionRequest(open=executor_pb2.OpenSession(client_id=args.client_id, model_id=model.id)))
            opened = session.recv("opened")
            if opened.WhichOneof("kind") != "opened":
                raise tc.Failure("the executor answered open with %s" % opened.WhichOneof("kind"))
            opened = opened.opened
            if opened.stage_count != n:
                raise tc.Failure("the executor's model has %d stages, --model has %d" % (opened.stage_count, n))
            if len(args.ids) + args.max_new_tokens - 1 > opened.max_context_tokens:
                raise tc.Failure("prompt (%d) + --max-new-tokens (%d) - 1 exceeds the executor's max_context_tokens %d"
                                 % (len(args.ids), args.max_new_tokens, opened.max_context_tokens), code=2)
            step_input = list(args.ids)
            for index in range(args.max_new_tokens):
                hidden = client.front(step_input)
                tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=list(hidden.shape),
                                           data=hidden.astype("<f4", copy=False).tobytes())
                step = executor_pb2.Step(seq=index + 1, stage_begin=begin, stage_end=end, input=tensor, sample=args.server_head)
                while True:
                    session.send(executor_pb2.SessionRequest(step=step))
                    answer = session.recv("the result of step %d" % step.seq)
                    kind = answer.WhichOneof("kind")
                    if kind == "refused":  # over the client's tokens per second: send it again after the hint
                        time.sleep(answer.refused.retry_after_ms / 1000.0)
                        continue
                    if kind != "result" or answer.result.seq != step.seq:
                        raise tc.Failure("expected the result of step %d, got %s" % (step.seq, kind))
                    break
                result = answer.result
                steps += 1
                server_ms += result.compute_ms
                if args.server_head:
                    token = result.token
                else:
                    out = result.tensor
                    shape = tuple(out.shape)
                    if out.dtype != tensor_pb2.DATA_TYPE_FLOAT32 or len(shape) != 3 or shape[2] != model.n_embd:
                        raise tc.Failure("the executor's step %d output has dtype %d shape %s, expected float32 [1, T, %d]"
                                         % (step.seq, out.dtype, list(shape), model.n_embd))
                    token = client.head_token(np.frombuffer(out.data, dtype="<f4").reshape(shape))
                ids.append(token)
                if not args.json:
                    print("token %d %d" % (index, token), flush=True)
                step_input = [token]
            session.close()
        except BaseException:
            session.cancel()
            raise
    wall_ms = (time.perf_counter() - t0) * 1000.0
    if args.json:
        print(json.dumps({"ids": ids, "placement": placement, "modelId": model.id, "steps": steps,
                          "serverComputeMs": server_ms, "wallMs": wall_ms}))
    else:
        print("ids %s" % ",".join(str(i) for i in ids))
        print("placement %s" % placement)
        print("summary steps=%d server_compute_ms=%.1f wall_ms=%.1f" % (steps, server_ms, wall_ms))
    return 0


if __name__ == "__main__":
    parser, parsed, loaded = parse_args(sys.argv[1:])
    tc.run(PROG, lambda: main(parser, parsed, loaded), "the server-executor at %s: Session" % parsed.addr)
