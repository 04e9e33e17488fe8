#!/usr/bin/env bash
# Makes a local CA and certificates for trying TLS (docs/security.md,
# section 5): a node certificate for the names given (default: localhost and
# 127.0.0.1; it serves clients and, in a cluster, dials other nodes, so it
# has both purposes) and a client certificate, all signed by a fresh CA.
# One node certificate for all the names of a test cluster's nodes is
# enough on a laptop; give each node its own in earnest. For a
# laptop or a test network only: the CA's key sits beside its certificate.
#
#   scripts/dev-certs.sh DIR [NAME ...]
#
# Writes DIR/ca.pem, DIR/ca-key.pem, DIR/node.pem, DIR/node-key.pem,
# DIR/client.pem, DIR/client-key.pem (keys mode 0600), and prints the
# [tls] table to paste into a node's config.
set -euo pipefail
dir=${1:?usage: scripts/dev-certs.sh DIR [NAME ...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost 127.0.0.1)
peer_names=$(printf '"%s", ' "${names[@]}"); peer_names=${peer_names%, }
command -v openssl >/dev/null || { echo "openssl is needed" >&2; exit 1; }
mkdir -p "$dir"
umask 077
days=825
san=""
for name in "${names[@]}"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
done
san=${san%,}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=TinkerDB development CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
leaf() { # name subject extensions
  local name=$1 subject=$2 extensions=$3
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subject" \
    -keyout "$dir/$name-key.pem" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
    -CAcreateserial -days "$days" -out "$dir/$name.pem" -extfile <(printf '%s\n' "$extensions") 2>/dev/null
  rm -f "$dir/$name.csr"
}
leaf node "/CN=${names[0]}" "subjectAltName=$san
extendedKeyUsage=serverAuth,clientAuth
keyUsage=critical,digitalSignature"
leaf client "/CN=tinkerdb-client" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
rm -f "$dir/ca.srl"
chmod 644 "$dir/ca.pem" "$dir/node.pem" "$dir/client.pem"
cat <<TOML
[tls]
cert_file = "$(cd "$dir" && pwd)/node.pem"
key_file = "$(cd "$dir" && pwd)/node-key.pem"
ca_file = "$(cd "$dir" && pwd)/ca.pem"
client_certs = "no"   # or "optional" / "required" (clients then use client.pem)
peer_names = [$peer_names]   # cluster nodes: names a node's certificate may carry
TOML
