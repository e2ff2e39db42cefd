#!/usr/bin/env bash
# Compiles Tandem's protos (proto/ at the repository root) into Python stubs for grpcio:
#   examples/python/gen.sh [OUT]      (default OUT: examples/python/gen, which git ignores)
# Needs protoc and grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc).
# The standard health proto is compiled apart, from its own folder: under its full path
# (grpc/health/v1/) it would make a Python package named `grpc` that hides grpcio itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$here/../../proto"
out="${1:-$here/gen}"
plugin="${GRPC_PYTHON_PLUGIN:-$(command -v grpc_python_plugin || echo /usr/bin/grpc_python_plugin)}"
command -v protoc >/dev/null || { echo "gen.sh: protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }
[ -x "$plugin" ] || { echo "gen.sh: grpc_python_plugin not found: apt-get install protobuf-compiler-grpc" >&2; exit 1; }
mkdir -p "$out"
(cd "$proto" && protoc -I . --python_out="$out" --grpc_out="$out" --plugin=protoc-gen-grpc="$plugin" tandem/*/v1/*.proto)
protoc -I "$proto/grpc/health/v1" --python_out="$out" --grpc_out="$out" --plugin=protoc-gen-grpc="$plugin" health.proto
echo "gen.sh: stubs in $out"
