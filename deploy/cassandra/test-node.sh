#!/usr/bin/env bash
# The single-node Cassandra that the test suite uses: `start` (idempotent) or `stop`.
#
#   deploy/cassandra/test-node.sh start|stop
#
# One place for its ports and data dir: `.ci/run` starts it before the tests and stops it
# after; the tests themselves (shared::store::cql::testing::ensure_cluster) call `start`, so a
# plain `cargo test` works too. Ports sit away from a real Cassandra's defaults and from the
# ports the end-to-end tests pick (20000-32000).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
export CASSANDRA_PORT=19042
export CASSANDRA_STORAGE_PORT=17000
export CASSANDRA_JMX_PORT=off
DATA_DIR=$REPO_ROOT/target/cassandra-test
case "${1:-}" in
  start) exec "$SCRIPT_DIR/start.sh" "$DATA_DIR" ;;
  stop) exec "$SCRIPT_DIR/stop.sh" "$DATA_DIR" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
