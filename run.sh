#!/usr/bin/env bash
# Builds Headwater and runs an example flow on its embedded defaults (data in ./data).
# Usage: ./run.sh [FLOW_FILE...]   (default: flows/demo.yaml); Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "run.sh: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
if [ $# -eq 0 ]; then set -- flows/demo.yaml; fi
exec cargo run --locked --release --quiet -- run "$@"
