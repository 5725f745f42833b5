#!/bin/sh
# Mesh TLS material with openssl: one cluster CA, one key and certificate per node.
#   node-cert.sh ca   CA_DIR              -> CA_DIR/ca.pem, CA_DIR/ca.key (keep ca.key offline)
#   node-cert.sh node CA_DIR NAME OUT_DIR -> OUT_DIR/{ca.pem,node.pem,node.key} for one node
# Every node certificate carries the SAN DNS:switchboard-mesh (the name every mesh client
# verifies, whatever IP it dialled) and both serverAuth and clientAuth (mutual TLS: a node
# is a server to some peers and a client to others). NAME goes into the CN and a second SAN,
# so logs and audits can tell nodes apart.
set -eu
days=397
case "${1:-}" in
ca)
    dir=$2
    mkdir -p "$dir"
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key"
    umask 022
    openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 \
        -subj "/CN=switchboard cluster CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$dir/ca.pem"
    ;;
node)
    ca=$2 name=$3 out=$4
    mkdir -p "$out"
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out/node.key"
    umask 022
    ext=$(mktemp)
    trap 'rm -f "$ext"' EXIT
    cat > "$ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:switchboard-mesh, DNS:$name
EOF
    openssl req -new -key "$out/node.key" -subj "/CN=$name" |
        openssl x509 -req -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -sha256 -days "$days" \
            -set_serial "0x$(openssl rand -hex 16)" -extfile "$ext" -out "$out/node.pem"
    cp "$ca/ca.pem" "$out/ca.pem"
    openssl verify -CAfile "$out/ca.pem" -purpose sslserver "$out/node.pem" >/dev/null
    openssl verify -CAfile "$out/ca.pem" -purpose sslclient "$out/node.pem" >/dev/null
    echo "$out/node.pem: $name"
    ;;
*)
    echo "usage: $0 ca CA_DIR | $0 node CA_DIR NAME OUT_DIR" >&2
    exit 2
    ;;
esac
