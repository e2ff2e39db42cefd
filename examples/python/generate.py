#!/usr/bin/env python3
"""Generates text through a Tandem client-agent's Generate stream (tandem.agent.v1.AgentService).

The agent follows the placement its planner pushed (or --placement); this script prints each
token as the stream delivers it, then the summary. Example:

    examples/python/generate.py --addr 127.0.0.1:50061 --prompt "The quick brown fox" --max-new-tokens 8

Output: one line per token, `token INDEX ID TEXT` (TEXT as a JSON string), then
`text TEXT`, `ids ID,ID,...` and `summary placement=P epoch=E class=C ttft_ms=X total_ms=Y`.
With --json, one JSON document instead.
"""

import argparse
import json
import sys

import tandem_client as tc

PROG = "generate.py"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Generate text through a Tandem client-agent.")
    tc.add_connection_flags(p, "the client-agent's", "127.0.0.1:50061")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (the agent tokenises it with GPT-2's tokenizer)")
    src.add_argument("--ids", type=tc.token_ids, help="prompt as comma-separated GPT-2 token ids")
    p.add_argument("--max-new-tokens", type=tc.positive_int(1 << 20), default=16, metavar="N",
                   help="tokens to generate, >= 1 (default 16; the agent checks it against the model's context)")
    p.add_argument("--placement", default="", help="'C'/'S' per stage, overriding the agent's plan (default: its plan)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    args = p.parse_args(argv)
    if args.prompt is not None and not args.prompt:
        p.error("argument --prompt: must not be empty")
    if args.placement and set(args.placement) - {"C", "S"}:
        p.error("argument --placement: must be 'C'/'S' letters, one per stage, given %r" % args.placement[:80])
    return p, args


def main(p, args):
    (agent_pb2, agent_grpc) = tc.load_stubs(p, args, "tandem.agent.v1.agent_pb2", "tandem.agent.v1.agent_pb2_grpc")
    req = agent_pb2.GenerateRequest(max_new_tokens=args.max_new_tokens, placement=args.placement)
    if args.prompt is not None:
        req.prompt = args.prompt
    else:
        req.ids.ids.extend(args.ids)
    tokens = []
    summary = None
    with tc.open_channel(p, args) as channel:
        stub = agent_grpc.AgentServiceStub(channel)
        for msg in stub.Generate(req, timeout=args.deadline_s, metadata=tc.call_metadata(args)):
            kind = msg.WhichOneof("kind")
            if kind == "token":
                t = msg.token
                tokens.append({"index": t.index, "id": t.id, "text": t.text})
                if not args.json:
                    print("token %d %d %s" % (t.index, t.id, json.dumps(t.text)), flush=True)
            elif kind == "summary":
                summary = msg.summary
    if summary is None:
        raise tc.Failure("the stream ended without a summary after %d tokens" % len(tokens))
    if args.json:
        print(json.dumps({
            "tokens": tokens,
            "ids": list(summary.ids),
            "text": summary.text,
            "placement": summary.placement,
            "planEpoch": summary.plan_epoch,
            "requestClass": summary.request_class,
            "ttftMs": summary.ttft_ms,
            "totalMs": summary.total_ms,
        }))
    else:
        print("text %s" % json.dumps(summary.text))
        print("ids %s" % ",".join(str(i) for i in summary.ids))
        print("summary placement=%s epoch=%d class=%s ttft_ms=%.1f total_ms=%.1f"
              % (summary.placement, summary.plan_epoch, summary.request_class or "-", summary.ttft_ms, summary.total_ms))
    return 0


if __name__ == "__main__":
    parser, parsed = parse_args(sys.argv[1:])
    tc.run(PROG, lambda: main(parser, parsed), "the client-agent at %s: Generate" % parsed.addr)
