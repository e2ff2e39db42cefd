#!/usr/bin/env python3
"""Watches the placement plans the Tandem planner pushes to one client (PlannerService.WatchPlans).

The stream sends the client's current plan at once (when it has one), then every change. The
planner makes a client's first plan once that client's agent has published its profile and an
executor has reported its load over NATS. Example:

    examples/python/watch_plans.py --addr 127.0.0.1:50071 --client-id laptop --count 1

Output per plan: `plan client=ID epoch=E algorithm=A created_unix_ms=T classes=N`, then one line
per request class: `  class NAME max_prompt_tokens=P expected_new_tokens=N placement=CCSS...
sla_ms=S predicted_latency_ms=L feasible=true|false`. With --json, one JSON object per line.
Without --count it watches until the deadline (--deadline-s) or Ctrl-C, both ending it with
exit code 0; with --count it exits 0 after that many plans and 1 if the deadline comes first.
With tokens on, the token must be the client's own or an operator token.
"""

import argparse
import json
import sys

import grpc

import tandem_client as tc

PROG = "watch_plans.py"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Watch the planner's plans for a client.")
    tc.add_connection_flags(p, "the planner's", "127.0.0.1:50071", default_deadline_s=600.0)
    p.add_argument("--client-id", required=True, help="the client (agent) id whose plans to watch")
    p.add_argument("--count", type=tc.positive_int(), default=None, metavar="N", help="exit after N plans")
    p.add_argument("--json", action="store_true", help="print one JSON object per plan")
    args = p.parse_args(argv)
    if not args.client_id.strip():
        p.error("argument --client-id: must not be empty")
    return p, args


def plan_dict(plan):
    return {
        "clientId": plan.client_id,
        "epoch": plan.epoch,
        "algorithm": plan.algorithm,
        "createdUnixMs": plan.created_unix_ms,
        "classes": [
            {
                "name": c.name,
                "maxPromptTokens": c.max_prompt_tokens,
                "expectedNewTokens": c.expected_new_tokens,
                "placement": c.placement,
                "slaMs": c.sla_ms,
                "predictedLatencyMs": c.predicted_latency_ms,
                "predictedServerWork": c.predicted_server_work,
                "feasible": c.feasible,
            }
            for c in plan.classes
        ],
    }


def print_plan(plan, as_json):
    if as_json:
        print(json.dumps(plan_dict(plan)), flush=True)
        return
    print("plan client=%s epoch=%d algorithm=%s created_unix_ms=%d classes=%d"
          % (plan.client_id, plan.epoch, plan.algorithm, plan.created_unix_ms, len(plan.classes)))
    for c in plan.classes:
        print("  class %s max_prompt_tokens=%d expected_new_tokens=%d placement=%s sla_ms=%g predicted_latency_ms=%.1f feasible=%s"
              % (c.name, c.max_prompt_tokens, c.expected_new_tokens, c.placement, c.sla_ms, c.predicted_latency_ms,
                 "true" if c.feasible else "false"))
    sys.stdout.flush()


def main(p, args):
    (planner_pb2, planner_grpc) = tc.load_stubs(p, args, "tandem.planner.v1.planner_pb2", "tandem.planner.v1.planner_pb2_grpc")
    seen = 0
    with tc.open_channel(p, args) as channel:
        stub = planner_grpc.PlannerServiceStub(channel)
        stream = stub.WatchPlans(planner_pb2.WatchPlansRequest(client_id=args.client_id),
                                 timeout=args.deadline_s, metadata=tc.call_metadata(args))
        try:
            for msg in stream:
                print_plan(msg.plan, args.json)
                seen += 1
                if args.count is not None and seen >= args.count:
                    stream.cancel()
                    return 0
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and args.count is None:
                sys.stderr.write("%s: the deadline (%gs) passed after %d plan(s)\n" % (PROG, args.deadline_s, seen))
                return 0
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise tc.Failure("the deadline (%gs) passed after %d of %d plan(s)" % (args.deadline_s, seen, args.count))
            raise
    if args.count is not None:
        raise tc.Failure("the planner ended the stream after %d of %d plan(s)" % (seen, args.count))
    return 0


if __name__ == "__main__":
    parser, parsed = parse_args(sys.argv[1:])
    tc.run(PROG, lambda: main(parser, parsed), "the planner at %s: WatchPlans" % parsed.addr)
