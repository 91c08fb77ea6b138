#!/usr/bin/env bash
# Builds the release binaries and the Debian packages of Headwater for the Raspberry Pi
# (arm64: Pi 3/4/5 and Zero 2 W on a 64-bit OS; armhf: a 32-bit OS) and for amd64.
# Installs what is missing first (rustup targets, Debian's cross gcc and qemu-user,
# cargo-deb), so it runs on a fresh Debian or Ubuntu machine; .github/workflows/release.yml
# calls exactly this script.
#
# Usage: deploy/cross-build.sh [TARGET...]
#   TARGET: aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf,
#           x86_64-unknown-linux-gnu (default: all three)
# Output: the packages and the binaries (headwater-TARGET) in ${DIST_DIR:-TARGET_DIR/dist}
#         (target/dist by default), and a table of the stripped binary sizes.
# See docs/raspberry-pi.md and docs/decisions/014-raspberry-pi-builds.md.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf x86_64-unknown-linux-gnu)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian's name for a target's architecture, its cross gcc, and its qemu-user binary.
deb_arch() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo arm64 ;;
    armv7-unknown-linux-gnueabihf) echo armhf ;;
    x86_64-unknown-linux-gnu) echo amd64 ;;
    *) echo "cross-build.sh: unknown target $1; use one of ${all_targets[*]}" >&2; exit 2 ;;
  esac
}
cross_gcc() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo aarch64-linux-gnu-gcc ;;
    armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf-gcc ;;
  esac
}
qemu_runner() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo "qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
    armv7-unknown-linux-gnueabihf) echo "qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
  esac
}
for target in "${targets[@]}"; do deb_arch "$target" >/dev/null; done

# --- what is missing -------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cross-build.sh: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
installed_targets=$(rustup target list --installed)
for target in "${targets[@]}"; do
  if ! grep -qx "$target" <<<"$installed_targets"; then
    echo "cross-build.sh: rustup target add $target"
    rustup target add "$target"
  fi
done
missing=()
for target in "${targets[@]}"; do
  gcc=$(cross_gcc "$target")
  if [ -n "$gcc" ] && ! command -v "$gcc" >/dev/null 2>&1; then
    missing+=("gcc-${gcc%-gcc}")
  fi
done
# qemu-user runs each ARM binary once (`--version`) before it is packaged.
if [[ " ${targets[*]} " == *" aarch64-"* || " ${targets[*]} " == *" armv7-"* ]]; then
  command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
fi
# dpkg-shlibdeps (dpkg-dev) computes the packages' libc dependency; gcc links amd64.
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  echo "cross-build.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "cross-build.sh: installing cargo-deb"
  cargo install cargo-deb --locked
fi

# --- build -----------------------------------------------------------------------------
target_dir=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
dist_dir=${DIST_DIR:-$target_dir/dist}
mkdir -p "$dist_dir"
sizes=()
for target in "${targets[@]}"; do
  arch=$(deb_arch "$target")
  echo "== $target ($arch): cargo build --release"
  # The release profile (Cargo.toml): fat LTO, one codegen unit, symbols stripped.
  cargo build --locked --release --target "$target"
  binary="$target_dir/$target/release/headwater"
  runner=$(qemu_runner "$target")
  # A binary that does not start is not packaged ($runner is empty for amd64).
  $runner "$binary" --version
  echo "== $target ($arch): cargo deb"
  # --no-build: the binary above; --no-strip: the profile stripped it already.
  package=$(cargo deb --locked --no-build --no-strip --target "$target" | tail -n 1)
  cp "$package" "$dist_dir/"
  cp "$binary" "$dist_dir/headwater-$target"
  sizes+=("$(printf '%-32s %-6s %9s bytes  %s' "$target" "$arch" \
    "$(stat -c %s "$binary")" "$(basename "$package")")")
done

echo
echo "stripped binary sizes (release profile):"
printf '  %s\n' "${sizes[@]}"
echo "packages and binaries in $dist_dir:"
ls -l "$dist_dir"
