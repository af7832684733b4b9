# Shared by the examples' run.sh scripts (sourced, not run): builds weft, starts nodes of a
# loopback cluster on free ports, their transport on mutual TLS (certificates from
# `weft cluster certs`), and stops them (and removes their files) on exit.
#
#   source "$(dirname "$0")/../cluster.sh"
#   build_weft [plugin …]        # builds weft (and these plugins, with cargo xtask plugins)
#   start_node NAME [TOML]       # starts node NAME (the first one is the seed); TOML is appended
#                                # to its weft.toml; sets url_NAME to its HTTP address
#   wait_members URL N           # waits (at most 30 s) until the node at URL sees N members
#   fault URL JSON               # POST /cluster/faults
#   wait_for EXPECTED COMMAND…   # waits (at most 30 s) until COMMAND prints EXPECTED
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

plugins=()
build_weft() {
  echo "== building weft"
  cargo build -q -p weft
  weft="${CARGO_TARGET_DIR:-$root/target}/debug/weft"
  plugins=("$@")
  if [ ${#plugins[@]} -gt 0 ]; then
    echo "== building the plugins"
    cargo xtask plugins > "$work/plugins.log" 2>&1 || { cat "$work/plugins.log"; exit 1; }
  fi
}

# A free loopback port, chosen by the kernel.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
seed_port=$(free_port)
seed_name=""

start_node() { # name [extra toml]
  local name=$1 extra=${2:-} http_port transport_port
  http_port=$(free_port)
  if [ -z "$seed_name" ]; then seed_name=$name; transport_port=$seed_port; else transport_port=0; fi
  mkdir -p "$work/$name/plugins"
  "$weft" cluster certs --dir "$work/certs" "$name" > /dev/null
  for plugin in "${plugins[@]}"; do
    cp "${CARGO_TARGET_DIR:-$root/target}/plugins/$plugin.wasm" "$work/$name/plugins/"
  done
  cat > "$work/$name/weft.toml" <<TOML
[node]
listen = "127.0.0.1:$http_port"
data_dir = "$work/$name/data"
plugins_dir = "$work/$name/plugins"

[cluster]
name = "$name"
listen = "127.0.0.1:$transport_port"
seeds = [{ name = "$seed_name", addr = "127.0.0.1:$seed_port" }]
probe_period_ms = 200
suspect_to_down_after_ms = 1000
fault_injection = true

[cluster.tls]
ca = "$work/certs/ca.pem"
cert = "$work/certs/$name.pem"
key = "$work/certs/$name.key"

$extra
TOML
  "$weft" serve --config "$work/$name/weft.toml" 2> "$work/$name/log" &
  pids+=($!)
  printf -v "url_$name" '%s' "http://127.0.0.1:$http_port"
}

members() { curl -sf "$1/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0; }
wait_members() {
  for _ in $(seq 300); do [ "$(members "$1")" = "$2" ] && return 0; sleep 0.1; done
  echo "node $1 never saw $2 member(s)"; exit 1
}
fault() { curl -sf -XPOST "$1/cluster/faults" -H 'content-type: application/json' -d "$2" > /dev/null; }
wait_for() {
  local expected=$1; shift
  for _ in $(seq 300); do [ "$("$@" 2>/dev/null)" = "$expected" ] && return 0; sleep 0.1; done
  echo "waited 30 s for '$expected', got '$("$@" 2>&1)'"; exit 1
}
