#!/bin/sh
# Checks everything under deploy/ that can be checked without a cluster:
#   every role config loads (`switchboard config print`, also with the commented-out cql_*
#   keys switched on), YAML parses, the dashboard is JSON, kustomize renders (also with the
#   cql component), the systemd unit verifies. Run from the repository root after
#   `cargo build`:  sh deploy/validate.sh    (SWITCHBOARD=path/to/binary to override)
set -eu
bin=${SWITCHBOARD:-target/debug/switchboard}
fail=0
ok() { echo "ok    $*"; }
bad() { echo "FAIL  $*"; fail=1; }

for f in deploy/config/*.toml deploy/kubernetes/config/*.toml deploy/kubernetes/cql/config/*.toml \
         deploy/multi-region/*/*.toml; do
    if out=$("$bin" config print --config "$f" 2>&1 >/dev/null); then ok "$f"; else bad "$f: $out"; fi
done
# The commented-out ScyllaDB keys (`#cql_...`) switched on, with kind = "cql".
tmp=$(mktemp -d)
for f in $(grep -l '^#cql_' deploy/config/*.toml deploy/multi-region/*/*.toml); do
    sed -e 's/^#cql_/cql_/' -e 's/^kind = "embedded"$/kind = "cql"/' "$f" > "$tmp/cql.toml"
    if ! grep -q '^kind = "cql"$' "$tmp/cql.toml"; then
        bad "$f (cql keys): no kind = \"embedded\" line to switch"
    elif out=$("$bin" config print --config "$tmp/cql.toml" 2>&1 >/dev/null); then
        ok "$f (cql keys)"
    else
        bad "$f (cql keys): $out"
    fi
done
rm -rf "$tmp"
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
    # With the ScyllaDB component enabled: no store claim or store mounts may remain.
    tmp=$(mktemp -d)
    cp -R deploy/kubernetes "$tmp/kubernetes"
    sed -i 's/^#components: \[cql\]$/components: [cql]/' "$tmp/kubernetes/kustomization.yaml"
    if ! grep -q '^components: \[cql\]$' "$tmp/kubernetes/kustomization.yaml"; then
        bad "kustomize cql: no '#components: [cql]' line in deploy/kubernetes/kustomization.yaml"
    elif ! out=$(kubectl kustomize "$tmp/kubernetes" 2>&1); then
        bad "kustomize cql: $out"
    elif echo "$out" | grep -qE 'switchboard-store|switchboard/store|mountPath: /store'; then
        bad "kustomize cql: the embedded store claim, label or mount is still there"
    elif ! echo "$out" | grep -q 'name: store-migrate'; then
        bad "kustomize cql: Job store-migrate missing"
    else
        ok "kubectl kustomize deploy/kubernetes + components: [cql]"
    fi
    rm -rf "$tmp"
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
