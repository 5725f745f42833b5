#!/usr/bin/env bash
# Start a single-node Apache Cassandra 5.0 (CQL on 127.0.0.1) for tests, in the background.
#
#   deploy/cassandra/start.sh [DATA_DIR]
#
# DATA_DIR: $1, else $CASSANDRA_DIR, else <repo>/target/cassandra. Idempotent: exits 0 at once
# when the node recorded in DATA_DIR/cassandra.pid is alive and answers CQL. See README.md.
#
# Environment (defaults):
#   CASSANDRA_VERSION=5.0.7         org.apache.cassandra:cassandra-all version (Maven Central)
#   CASSANDRA_PORT=9042             CQL native transport port
#   CASSANDRA_STORAGE_PORT=7000     inter-node (gossip) port, loopback only
#   CASSANDRA_JMX_PORT=7199         local-only JMX port (nodetool); "off" = no JMX connector
#   CASSANDRA_HEAP_MAX=1g  CASSANDRA_HEAP_MIN=512m
#   CASSANDRA_CLUSTER_NAME=switchboard-test
#   CASSANDRA_START_TIMEOUT=180     seconds to wait for CQL
#   CASSANDRA_JVM_OPTS=             extra JVM flags (appended)
#   JAVA_HOME                       JDK 17+ (else `java` on PATH)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

DATA_DIR=${1:-${CASSANDRA_DIR:-$REPO_ROOT/target/cassandra}}
mkdir -p "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd)

VERSION=${CASSANDRA_VERSION:-5.0.7}
CQL_PORT=${CASSANDRA_PORT:-9042}
STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7000}
JMX_PORT=${CASSANDRA_JMX_PORT:-7199}
HEAP_MAX=${CASSANDRA_HEAP_MAX:-1g}
HEAP_MIN=${CASSANDRA_HEAP_MIN:-512m}
CLUSTER_NAME=${CASSANDRA_CLUSTER_NAME:-switchboard-test}
START_TIMEOUT=${CASSANDRA_START_TIMEOUT:-180}
HOST=127.0.0.1

PID_FILE=$DATA_DIR/cassandra.pid
OUT_FILE=$DATA_DIR/cassandra.out
LOG_FILE=$DATA_DIR/logs/system.log
CONF_DIR=$DATA_DIR/conf
PROBE=(python3 "$SCRIPT_DIR/cql_probe.py" --host "$HOST" --port "$CQL_PORT" --timeout 2)

log() { echo "cassandra: $*" >&2; }

# pid of our node if DATA_DIR/cassandra.pid names a live CassandraDaemon, else nothing.
live_pid() {
    local pid
    [[ -s $PID_FILE ]] || return 1
    pid=$(tr -dc 0-9 < "$PID_FILE")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q CassandraDaemon || return 1
    echo "$pid"
}

cql_ready() { "${PROBE[@]}" --quiet; }

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

show_failure() {
    log "$*"
    for f in "$OUT_FILE" "$LOG_FILE"; do
        if [[ -s $f ]]; then
            echo "----- tail -n 40 $f (lines cut at 300 chars) -----" >&2
            tail -n 40 "$f" | cut -c1-300 >&2
        fi
    done
    exit 1
}

# "Startup complete" written to system.log by this run (LOG_OFFSET: log size before launch;
# unset when we only wait for a node started earlier, then the CQL answer alone counts).
LOG_OFFSET=
startup_logged() {
    [[ -z $LOG_OFFSET ]] && return 0
    [[ -f $LOG_FILE ]] || return 1
    local size; size=$(stat -c %s "$LOG_FILE")
    (( size < LOG_OFFSET )) && LOG_OFFSET=0   # rotated meanwhile
    grep -q 'Startup complete' < <(tail -c +$(( LOG_OFFSET + 1 )) "$LOG_FILE")
}

# Waits for the CQL port to answer OPTIONS with SUPPORTED (and the log to say startup is done).
wait_ready() {
    local pid=$1 t0=$2 deadline=$(( $2 + START_TIMEOUT ))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            show_failure "process $pid exited during startup"
        fi
        if cql_ready && startup_logged; then
            log "ready: CQL on $HOST:$CQL_PORT (pid $pid) after $(( $(date +%s) - t0 )) s; data dir $DATA_DIR"
            return 0
        fi
        if (( $(date +%s) >= deadline )); then
            show_failure "CQL on $HOST:$CQL_PORT did not answer within ${START_TIMEOUT} s (pid $pid still running; stop it with deploy/cassandra/stop.sh $DATA_DIR)"
        fi
        sleep 0.5
    done
}

# One start.sh per data dir at a time (fd 9 is closed for the JVM below).
if command -v flock >/dev/null; then
    exec 9>"$DATA_DIR/.start.lock"
    flock -w "$START_TIMEOUT" 9 || { log "another start.sh holds $DATA_DIR/.start.lock"; exit 1; }
fi

if pid=$(live_pid); then
    if cql_ready; then
        log "already running: CQL on $HOST:$CQL_PORT (pid $pid), data dir $DATA_DIR"
        exit 0
    fi
    log "pid $pid is running but CQL is not answering yet; waiting"
    wait_ready "$pid" "$(date +%s)"
    exit 0
fi
rm -f "$PID_FILE"

for p in "$CQL_PORT" "$STORAGE_PORT" $([[ $JMX_PORT == off ]] || echo "$JMX_PORT"); do
    if port_busy "$p"; then
        log "port $HOST:$p is already in use by another process (not the node in $DATA_DIR)."
        log "pick free ports with CASSANDRA_PORT / CASSANDRA_STORAGE_PORT / CASSANDRA_JMX_PORT."
        exit 1
    fi
done

# ---- Java ------------------------------------------------------------------------------
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java
command -v "$JAVA" >/dev/null || { log "java not found (set JAVA_HOME)"; exit 1; }
java_major=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
if [[ -z $java_major ]] || (( ${java_major%%.*} < 17 )); then
    log "need JDK 17 or newer for these JVM flags, found '${java_major:-?}' ($JAVA)"
    exit 1
fi

# ---- classpath (cached per version; rebuilt when a jar went missing or the pom changed) ----
CP_FILE=$DATA_DIR/classpath-$VERSION.txt
cp_valid() {
    [[ -s $CP_FILE && $CP_FILE -nt $SCRIPT_DIR/pom.xml ]] || return 1
    local IFS=: jar
    for jar in $(cat "$CP_FILE"); do [[ -f $jar ]] || return 1; done
}
if ! cp_valid; then
    log "resolving org.apache.cassandra:cassandra-all:$VERSION with Maven"
    command -v mvn >/dev/null || { log "mvn not found"; exit 1; }
    if ! mvn -B -Dstyle.color=never -f "$SCRIPT_DIR/pom.xml" -Dcassandra.version="$VERSION" \
            dependency:build-classpath -Dmdep.outputFile="$CP_FILE.tmp" >"$DATA_DIR/mvn.log" 2>&1; then
        rm -f "$CP_FILE.tmp"
        tail -n 30 "$DATA_DIR/mvn.log" >&2
        log "maven could not resolve the classpath (full output: $DATA_DIR/mvn.log)"
        exit 1
    fi
    mv "$CP_FILE.tmp" "$CP_FILE"
fi
CLASSPATH_VALUE=$(cat "$CP_FILE")
JAMM_JAR=$(tr ':' '\n' < "$CP_FILE" | grep -m1 '/jamm-[0-9.]*\.jar$' || true)

# ---- config ------------------------------------------------------------------------------
mkdir -p "$CONF_DIR" "$DATA_DIR"/{data,commitlog,saved_caches,hints,cdc_raw,logs,triggers}

cat > "$CONF_DIR/cassandra.yaml" <<EOF
# Generated by deploy/cassandra/start.sh on every start; edit the script, not this file.
# Single node on loopback, sized for a small test box. Unlisted settings keep the
# Cassandra $VERSION defaults.
cluster_name: '$CLUSTER_NAME'
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
num_tokens: 1
initial_token: 0
auto_bootstrap: false
storage_compatibility_mode: NONE

seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$STORAGE_PORT"
listen_address: $HOST
storage_port: $STORAGE_PORT
rpc_address: $HOST
start_native_transport: true
native_transport_port: $CQL_PORT
endpoint_snitch: SimpleSnitch
dynamic_snitch: false

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

data_file_directories:
  - $DATA_DIR/data
commitlog_directory: $DATA_DIR/commitlog
saved_caches_directory: $DATA_DIR/saved_caches
hints_directory: $DATA_DIR/hints
cdc_raw_directory: $DATA_DIR/cdc_raw
cdc_enabled: false

commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
commitlog_total_space: 256MiB
disk_failure_policy: stop
commit_failure_policy: stop

# Tests create, truncate and drop tables constantly: no snapshots, no backups.
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false

concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 4
concurrent_compactors: 1
memtable_flush_writers: 1
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
compaction_throughput: 64MiB/s
key_cache_size: 16MiB
counter_cache_size: 8MiB
file_cache_size: 64MiB
native_transport_max_threads: 32
hinted_handoff_enabled: false
EOF

cat > "$CONF_DIR/logback.xml" <<EOF
<!-- Generated by deploy/cassandra/start.sh. INFO and up to logs/system.log, WARN and up to stdout
     (that is, DATA_DIR/cassandra.out). -->
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>$DATA_DIR/logs/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>$DATA_DIR/logs/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>50MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
    <appender-ref ref="STDOUT"/>
  </root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
EOF

# ---- JVM flags ---------------------------------------------------------------------------
# From Cassandra's conf/jvm-server.options and conf/jvm17-server.options (5.0) plus what
# bin/cassandra and cassandra-env.sh add; -XX:+AlwaysPreTouch, -XX:+UseNUMA, the GC log and the
# OOM heap dump are left out (faster start, no 1 GB dumps under target/); an OOM exits the JVM.
JVM_OPTS=(
    -Xms"$HEAP_MIN" -Xmx"$HEAP_MAX" -Xss256k
    -ea -da:net.openhft...
    -XX:+UseThreadPriorities
    -XX:+ExitOnOutOfMemoryError
    -XX:+UseTLAB -XX:+ResizeTLAB
    -XX:+PerfDisableSharedMem
    -Djava.net.preferIPv4Stack=true
    # G1 (jvm17-server.options)
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300
    -XX:InitiatingHeapOccupancyPercent=70
    # JPMS (jvm17-server.options)
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    # Netty (jvm17-server.options)
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    # Node configuration (what bin/cassandra passes) and fast single-node startup.
    -Dcassandra.config="file://$CONF_DIR/cassandra.yaml"
    -Dcassandra.storagedir="$DATA_DIR"
    -Dcassandra.logdir="$DATA_DIR/logs"
    -Dcassandra.triggers_dir="$DATA_DIR/triggers"
    -Dcassandra-pidfile="$PID_FILE"
    -Dlogback.configurationFile="file://$CONF_DIR/logback.xml"
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.unsafesystem=true
    -Dcassandra.shutdown_announce_in_ms=0
)
[[ -n $JAMM_JAR ]] && JVM_OPTS+=(-javaagent:"$JAMM_JAR")
if [[ $JMX_PORT != off ]]; then
    # Local-only JMX (bound to 127.0.0.1, no auth), as cassandra-env.sh does by default.
    JVM_OPTS+=(-Dcassandra.jmx.local.port="$JMX_PORT"
        -Dcom.sun.management.jmxremote.rmi.port="$JMX_PORT" -Djava.rmi.server.hostname=$HOST)
fi
# shellcheck disable=SC2206
[[ -n ${CASSANDRA_JVM_OPTS:-} ]] && JVM_OPTS+=($CASSANDRA_JVM_OPTS)

# ---- launch ----------------------------------------------------------------------------
t0=$(date +%s)
log "starting Cassandra $VERSION: CQL $HOST:$CQL_PORT, storage $STORAGE_PORT, JMX $JMX_PORT, data dir $DATA_DIR"
: > "$OUT_FILE"
LOG_OFFSET=$(stat -c %s "$LOG_FILE" 2>/dev/null || echo 0)
SETSID=$(command -v setsid || true)
# setsid: own session, so a Ctrl-C or hangup of the caller does not reach the node.
nohup $SETSID "$JAVA" "${JVM_OPTS[@]}" -cp "$CLASSPATH_VALUE" \
    org.apache.cassandra.service.CassandraDaemon >>"$OUT_FILE" 2>&1 </dev/null 9>&- &
pid=$!
echo "$pid" > "$PID_FILE"
wait_ready "$pid" "$t0"
