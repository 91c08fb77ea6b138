#!/usr/bin/env bash
# Installs what the tests need (idempotently: only what is missing) and runs them.
# Usage: ./test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages the tests talk to: a reference MQTT broker and its clients.
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
# openssl: the TLS client of tests/tls_handshake.rs and the certificates of tests/mosquitto_conf.rs.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# MQTT.js in headless Chromium (tests/websocket.rs): Debian's chromium, and node/npm for
# the driver (playwright-core never downloads a browser here).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The C plugin SDK and example (plugins/build.sh): clang for wasm32, and lld's wasm-ld.
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v wasm-ld >/dev/null 2>&1 || missing+=(lld)
# PostgreSQL for tests/sql.rs, which starts its own throwaway clusters (initdb, pg_ctl).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# tests/deb.rs: systemd-analyze checks the unit (package systemd; nothing is started),
# dpkg-shlibdeps (dpkg-dev) gives cargo-deb the package's libc dependency.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# mosquitto lives in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin"

# The Python MQTT client the paho tests drive (tests/peers/*.py).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
  echo "test.sh: installing python3 and pip"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
fi
if ! python3 -c 'import paho.mqtt.client' >/dev/null 2>&1; then
  echo "test.sh: installing paho-mqtt"
  # Debian's own python3 refuses pip installs (externally managed) without the flag.
  python3 -m pip install --quiet 'paho-mqtt>=2,<3' 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages 'paho-mqtt>=2,<3'
fi

# The browser test's npm packages (MQTT.js, playwright-core), pinned by package-lock.json.
if [ ! -d tests/browser/node_modules/mqtt ] || [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "test.sh: installing the browser test's npm packages"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# The Rust toolchain (edition 2024 needs Rust >= 1.85; Debian 12's cargo is older).
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "test.sh: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# WASM plugins: Rust's wasm32 target, AssemblyScript (pinned by sdk/assemblyscript's
# package-lock.json), then every example plugin built from source into plugins/build/,
# where flows/plugin-*.yaml (tests/flow_check.rs) and tests/plugins_examples.rs find them.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  echo "test.sh: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi
if [ ! -x sdk/assemblyscript/node_modules/.bin/asc ]; then
  echo "test.sh: installing AssemblyScript"
  (cd sdk/assemblyscript && npm ci --no-audit --no-fund --loglevel=error)
fi
plugins/build.sh
# The SDK's and the example plugins' own unit tests, natively on the SDK's test host.
(cd sdk/rust && cargo test --locked --quiet)
(cd plugins && cargo test --locked --quiet --target-dir target)
# tests/deb.rs builds the Debian package with cargo-deb (deploy/cross-build.sh does too).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-deb"
  cargo install cargo-deb --locked
fi

cargo test --locked "$@"
