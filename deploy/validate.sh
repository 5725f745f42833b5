#!/bin/sh
# Checks everything under deploy/ that can be checked without a cluster:
#   every role config loads (`switchboard config print`), YAML parses, the dashboard is JSON,
#   kustomize renders, the systemd unit verifies. Run from the repository root after
#   `cargo build`:  sh deploy/validate.sh    (SWITCHBOARD=path/to/binary to override)
set -eu
bin=${SWITCHBOARD:-target/debug/switchboard}
fail=0
ok() { echo "ok    $*"; }
bad() { echo "FAIL  $*"; fail=1; }

for f in deploy/config/*.toml deploy/kubernetes/config/*.toml deploy/multi-region/*/*.toml; do
    if out=$("$bin" config print --config "$f" 2>&1 >/dev/null); then ok "$f"; else bad "$f: $out"; fi
done
# Instances that override a shared file through an environment file.
for pair in deploy/systemd/cs-2.env:deploy/config/channel-server.toml \
            deploy/systemd/gateway.env:deploy/config/gateway.toml \
            deploy/multi-region/core/cs-2.env:deploy/multi-region/core/channel-server.toml; do
    envf=${pair%%:*} conf=${pair#*:}
    if out=$(set -a; . "./$envf"; set +a; "$bin" config print --config "$conf" 2>&1 >/dev/null); then
        ok "$conf + $envf"
    else
        bad "$conf + $envf: $out"
    fi
done
# Kubernetes overrides of the channel server (pod name and pod IP).
if out=$(SWITCHBOARD_NODE__ID=cs-0 SWITCHBOARD_CHANNEL_SERVER__MESH_ADDR=10.244.0.7:7200 \
        "$bin" config print --config deploy/kubernetes/config/channel-server.toml 2>&1 >/dev/null); then
    ok "kubernetes channel-server + pod env"
else
    bad "kubernetes channel-server + pod env: $out"
fi

if python3 -c 'import yaml' 2>/dev/null; then
    for f in $(find deploy -name '*.yml' -o -name '*.yaml'); do
        if python3 -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$f"; then ok "$f"; else bad "$f"; fi
    done
else
    echo "skip  YAML (python3 yaml missing)"
fi
if python3 -m json.tool deploy/grafana/switchboard-dashboard.json >/dev/null; then
    ok deploy/grafana/switchboard-dashboard.json
else
    bad deploy/grafana/switchboard-dashboard.json
fi
if command -v kubectl >/dev/null; then
    if kubectl kustomize deploy/kubernetes >/dev/null; then ok "kubectl kustomize deploy/kubernetes"; else bad "kustomize"; fi
fi
if command -v promtool >/dev/null; then
    if promtool check config deploy/prometheus/prometheus.yml >/dev/null; then ok promtool; else bad promtool; fi
fi
if command -v systemd-analyze >/dev/null; then
    tmp=$(mktemp -d)
    sed "s#/usr/local/bin/switchboard#$(realpath "$bin")#" deploy/systemd/switchboard@.service > "$tmp/switchboard@gateway.service"
    if systemd-analyze verify "$tmp/switchboard@gateway.service"; then ok "systemd-analyze verify"; else bad "systemd unit"; fi
    rm -rf "$tmp"
fi
exit $fail
