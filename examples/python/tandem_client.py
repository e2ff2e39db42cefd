"""What the example scripts share: connection flags, the channel, the stubs and error reporting.

Every script takes the same connection flags as the `tandem` CLI (docs/security.md):
--tls-ca, --tls-cert, --tls-key and --token, defaulting to $TANDEM_TLS_CA, $TANDEM_TLS_CERT,
$TANDEM_TLS_KEY and $TANDEM_TOKEN; without a CA the channel is plaintext. A bad flag exits 2
with one line naming it; a gRPC error exits 1 (2 for INVALID_ARGUMENT, as the CLI does) with
the status code name and the server's message, never a stack trace.
"""

import argparse
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_STUBS = os.path.join(HERE, "gen")
# Largest message sent or received; the services use 8 MiB (hidden states of long prompts are large).
MAX_MESSAGE_BYTES = 8 << 20
# The services' channel options (libs/protocol channelOptions): keepalive notices a dead peer
# within 15 s, and reconnects are tried at least once a second.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

try:
    import grpc
except ImportError:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        "grpcio is not installed for this Python (%s): apt-get install python3-grpcio python3-protobuf\n" % sys.executable
    )
    sys.exit(1)


def positive_int(limit=None):
    """An argparse type: an integer >= 1 (and <= limit when given)."""

    def parse(text):
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError("must be an integer, given %r" % text[:40])
        if limit is None and value < 1:
            raise argparse.ArgumentTypeError("must be >= 1, given %d" % value)
        if limit is not None and not 1 <= value <= limit:
            raise argparse.ArgumentTypeError("must be 1..%d, given %d" % (limit, value))
        return value

    return parse


def positive_float(text):
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number, given %r" % text[:40])
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number > 0, given %r" % text[:40])
    return value


def token_ids(text):
    """An argparse type: comma-separated GPT-2 token ids (0..50256 is checked by the server against its model)."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError("must be comma-separated non-negative integers, given %r" % text[:40])
    ids = [int(p) for p in parts]
    if any(i >= 2**32 for i in ids):
        raise argparse.ArgumentTypeError("ids must be below 2^32, given %r" % text[:40])
    return ids


def add_connection_flags(parser, what, default_addr, default_deadline_s=60.0):
    """Adds --addr (the `what` service's host:port), the security flags, --deadline-s and --stubs."""
    parser.add_argument("--addr", default=default_addr, help="%s address, host:port (default %s)" % (what, default_addr))
    parser.add_argument("--tls-ca", default=os.environ.get("TANDEM_TLS_CA", ""), metavar="FILE",
                        help="connect over TLS trusting this PEM CA (default $TANDEM_TLS_CA, else plaintext)")
    parser.add_argument("--tls-cert", default=os.environ.get("TANDEM_TLS_CERT", ""), metavar="FILE",
                        help="client certificate for mTLS, with --tls-key (default $TANDEM_TLS_CERT)")
    parser.add_argument("--tls-key", default=os.environ.get("TANDEM_TLS_KEY", ""), metavar="FILE",
                        help="its private key (default $TANDEM_TLS_KEY)")
    parser.add_argument("--token", default=os.environ.get("TANDEM_TOKEN", ""),
                        help="bearer token, sent as 'authorization: Bearer TOKEN' (default $TANDEM_TOKEN)")
    parser.add_argument("--deadline-s", type=positive_float, default=default_deadline_s, metavar="S",
                        help="deadline of the call, seconds (default %g)" % default_deadline_s)
    parser.add_argument("--stubs", default=os.environ.get("TANDEM_PY_STUBS", DEFAULT_STUBS), metavar="DIR",
                        help="folder of the compiled stubs (gen.sh's output; default $TANDEM_PY_STUBS, else %s)" % DEFAULT_STUBS)


def _read(parser, flag, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        parser.error("argument %s: cannot read %s: %s" % (flag, path, err.strerror))


def open_channel(parser, args):
    """The channel the flags describe: TLS (with a client certificate when given) or plaintext."""
    addr = args.addr.strip()
    if not addr or ":" not in addr:
        parser.error("argument --addr: must be host:port, given %r" % args.addr[:80])
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("argument %s: needed with %s" % (("--tls-key", "--tls-cert") if args.tls_cert else ("--tls-cert", "--tls-key")))
    if args.tls_cert and not args.tls_ca:
        parser.error("argument --tls-ca: needed with --tls-cert (a client certificate is sent over TLS only)")
    if not args.tls_ca:
        return grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
    root = _read(parser, "--tls-ca", args.tls_ca)
    cert = _read(parser, "--tls-cert", args.tls_cert) if args.tls_cert else None
    key = _read(parser, "--tls-key", args.tls_key) if args.tls_key else None
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(addr, creds, options=CHANNEL_OPTIONS)


def call_metadata(args):
    """The metadata of every call: the bearer token when one is given."""
    return (("authorization", "Bearer " + args.token),) if args.token else ()


def load_stubs(parser, args, *modules):
    """Imports the compiled stub modules (e.g. 'tandem.agent.v1.agent_pb2') from --stubs."""
    if not os.path.isdir(args.stubs):
        parser.error("argument --stubs: %s is not a folder: compile the stubs with examples/python/gen.sh" % args.stubs)
    sys.path.insert(0, args.stubs)
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as err:
            parser.error("argument --stubs: cannot import %s from %s (%s): run examples/python/gen.sh" % (name, args.stubs, err))
    return loaded


class Failure(Exception):
    """A failure the script reports in one line (exit code 1 unless given)."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def run(prog, main, what):
    """Runs main(); reports a gRPC error as its status code and message, and a Failure as its message."""
    try:
        sys.exit(main() or 0)
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        details = err.details() if hasattr(err, "details") else str(err)
        sys.stderr.write("%s: %s failed with %s: %s\n" % (prog, what, name, details))
        sys.exit(2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1)
    except Failure as err:
        sys.stderr.write("%s: %s\n" % (prog, err))
        sys.exit(err.code)
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted\n" % prog)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
