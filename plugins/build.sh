#!/usr/bin/env bash
# Builds every example plugin from source into plugins/build/NAME.wasm:
#   Rust crates of the workspace in this folder (cargo, wasm32-unknown-unknown),
#   c_*/ folders (clang --target=wasm32 -nostdlib + lld, with sdk/c/headwater_plugin.h),
#   as_*/ folders (AssemblyScript's asc from sdk/assemblyscript/node_modules).
# Idempotent (cargo and the copies only redo what changed); stops at the first failure
# with the reason, and says what to install when a toolchain is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
sdk="$here/../sdk"
out="$here/build"
mkdir -p "$out"

fail() {
  echo "plugins/build.sh: $*" >&2
  exit 1
}

# ---- Rust: one workspace, its own target/ (not the gateway's CARGO_TARGET_DIR).
command -v cargo >/dev/null 2>&1 || fail "cargo is missing: install Rust with rustup"
if command -v rustup >/dev/null 2>&1 &&
  ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  fail "the wasm32 target is missing: rustup target add wasm32-unknown-unknown"
fi
echo "plugins/build.sh: rust"
cargo build --quiet --locked --release --target wasm32-unknown-unknown \
  --manifest-path "$here/Cargo.toml" --target-dir "$here/target"
for manifest in "$here"/*/Cargo.toml; do
  name="$(basename "$(dirname "$manifest")")"
  cp -f "$here/target/wasm32-unknown-unknown/release/$name.wasm" "$out/$name.wasm"
done

# ---- C: each c_*/ folder is one plugin, from all its .c files.
c_dirs=("$here"/c_*/)
if [ -d "${c_dirs[0]}" ]; then
  command -v clang >/dev/null 2>&1 || fail "clang is missing: apt-get install -y clang lld"
  command -v wasm-ld >/dev/null 2>&1 || fail "wasm-ld is missing: apt-get install -y lld"
  echo "plugins/build.sh: c"
  for dir in "${c_dirs[@]}"; do
    name="$(basename "$dir")"
    clang --target=wasm32 -nostdlib -O2 -Wall -Wextra -Werror -I "$sdk/c" \
      -Wl,--no-entry -Wl,--strip-debug -o "$out/$name.wasm.tmp" "$dir"*.c
    mv -f "$out/$name.wasm.tmp" "$out/$name.wasm"
  done
fi

# ---- AssemblyScript: each as_*/ folder is one plugin, entry assembly/index.ts.
as_dirs=("$here"/as_*/)
if [ -d "${as_dirs[0]}" ]; then
  asc="$sdk/assemblyscript/node_modules/.bin/asc"
  if [ ! -x "$asc" ]; then
    command -v npm >/dev/null 2>&1 || fail "npm is missing: apt-get install -y nodejs npm"
    echo "plugins/build.sh: installing AssemblyScript (npm ci in sdk/assemblyscript)"
    (cd "$sdk/assemblyscript" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  echo "plugins/build.sh: assemblyscript"
  for dir in "${as_dirs[@]}"; do
    name="$(basename "$dir")"
    "$asc" "$dir/assembly/index.ts" --runtime incremental -O3 --noAssert \
      -o "$out/$name.wasm.tmp"
    mv -f "$out/$name.wasm.tmp" "$out/$name.wasm"
  done
fi

ls "$out"/*.wasm | sed "s|^$here/|plugins/|"
