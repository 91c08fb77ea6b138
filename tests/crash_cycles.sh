#!/usr/bin/env bash
# Crash durability, long form: the built-in broker is SIGKILLed and restarted N times
# (default 20) while QoS 1 and QoS 2 publishers feed a persistent subscriber that is
# online in odd cycles and offline in even ones. Every acknowledged message must be
# delivered, QoS 2 exactly once. `cargo test` runs the same test with 6 cycles.
# Usage: tests/crash_cycles.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
HEADWATER_CRASH_CYCLES="${1:-20}" exec cargo test --locked --test broker \
  acknowledged_messages_survive_sigkill_and_qos_2_arrives_exactly_once -- --exact --nocapture
