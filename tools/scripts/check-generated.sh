#!/usr/bin/env bash
# Regenerates libs/protocol/src/generated from proto/ (ts-proto code and the descriptor set
# server reflection serves) and fails when the committed files differ.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx --no-install buf lint
rm -rf libs/protocol/src/generated
npx --no-install buf generate
node tools/scripts/gen-descriptor-set.mjs
if ! git diff --exit-code --stat -- libs/protocol/src/generated || [ -n "$(git status --porcelain -- libs/protocol/src/generated)" ]; then
  echo "generated code is out of date: run 'npm run generate' and commit libs/protocol/src/generated" >&2
  exit 1
fi
echo "generated code up to date"
