#!/usr/bin/env bash
# Fails when proto/ breaks compatibility (buf FILE rules) with the previous commit.
# CPA_BREAKING_BASE names another git ref to compare with (e.g. the last released tag).
set -euo pipefail
buf=${1:-buf}
base=${CPA_BREAKING_BASE:-HEAD~1}
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
  echo "buf breaking: no commit '$base' to compare with; skipped"
  exit 0
fi
if ! git cat-file -e "$base:proto" 2>/dev/null; then
  echo "buf breaking: '$base' has no proto/; skipped"
  exit 0
fi
"$buf" breaking --against ".git#ref=$base"
echo "buf breaking: proto/ is compatible with $base"
