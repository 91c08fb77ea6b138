#!/usr/bin/env bash
# Runs a subset of the tests on the Raspberry Pi targets (aarch64 and armv7) under
# qemu-user, as .ci/run does: the library's unit tests (flow engine, store, nodes, WASM
# plugins, serial over pseudo-terminals) and a broker round trip over loopback. The test
# binaries use the fast `arm-test` profile (opt-level 1, no LTO, no debug info);
# .cargo/config.toml names the cross linkers and the qemu runners.
# Installs what is missing first (rustup targets, Debian's cross gcc and qemu-user).
#
# Usage: deploy/qemu-tests.sh [TARGET...]
#   (default: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
#
# Only tests that stay in one process run here: qemu-user cannot start another ARM
# program (no binfmt_misc), so tests that spawn `headwater` or Mosquitto are host-only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

installed_targets=$(rustup target list --installed)
missing=()
for target in "${targets[@]}"; do
  case "$target" in
    aarch64-unknown-linux-gnu) gcc=aarch64-linux-gnu-gcc ;;
    armv7-unknown-linux-gnueabihf) gcc=arm-linux-gnueabihf-gcc ;;
    *) echo "qemu-tests.sh: unknown target $target" >&2; exit 2 ;;
  esac
  if ! grep -qx "$target" <<<"$installed_targets"; then
    echo "qemu-tests.sh: rustup target add $target"
    rustup target add "$target"
  fi
  command -v "$gcc" >/dev/null 2>&1 || missing+=("gcc-${gcc%-gcc}")
done
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  echo "qemu-tests.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The subset:
#  - every unit test of the library, all in process: the flow engine (edges, acks,
#    supervisors, clock, templates), the nodes and Rhai scripts, the redb store with its
#    group commit and per-node state, the broker's codec, sessions, in-process link,
#    WebSocket framing and TLS set-up (ring's ARM code), WebAssembly plugins from WAT
#    (src/plugin, nodes::transforms::wasm: Cranelift on aarch64, the Pulley interpreter
#    on armv7), and serial ports over pseudo-terminals (src/nodes/serial, serial.in/out:
#    the TCGETS/TCSETS fallback, since qemu-user 7.2 answers ENOSYS to TCGETS2);
#  - the broker over loopback TCP with a durable store, restarted on the same data:
#    tests/broker_in_process.rs.
# Only those two test binaries are built (`--lib --test broker_in_process`), not the
# process tests: building them would cost CI minutes for nothing that can run here.
# One target at a time, not `--target A --target B` in one cargo run: that unifies
# wasmtime's features across both targets (armv7's `pulley` would be built into the
# aarch64 binaries, which then are not what ships). The host parts (build scripts,
# proc macros) are shared anyway: the second target reuses them from target/arm-test.
for target in "${targets[@]}"; do
  echo "== $target: building the test binaries (profile arm-test)"
  cargo test --locked --profile arm-test --target "$target" --no-run \
    --lib --test broker_in_process
  echo "== $target: library unit tests: flow engine, nodes, scripts, store, broker, plugins, serial (under qemu)"
  # Skipped here only: that test asserts serialport set the speed through TCSETS2
  # (CBAUD == BOTHER); under qemu-user the TCGETS/TCSETS fallback sets B57600 instead,
  # which is the fallback working. The rest of that test and the other pty tests run.
  cargo test --locked --profile arm-test --target "$target" --lib -- \
    --skip nodes::sinks::serial_out::tests::writes_with_a_terminator_fails_while_unplugged_and_reopens_with_backoff
  echo "== $target: broker round trip over loopback (under qemu)"
  cargo test --locked --profile arm-test --target "$target" --test broker_in_process
done
