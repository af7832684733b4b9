#!/usr/bin/env bash
# The OR-Set shopping cart across two weft nodes: concurrent adds and removes, a partition, and
# the heal that makes both carts converge with add-wins semantics. Run from anywhere:
#   bash examples/shopping-cart/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

echo "== building weft"
cargo build -q -p weft
weft="${CARGO_TARGET_DIR:-$root/target}/debug/weft"

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A free loopback port, chosen by the kernel.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
seed_port=$(free_port)

start_node() { # name http-port transport-port
  mkdir -p "$work/$1"
  cat > "$work/$1/weft.toml" <<TOML
[node]
listen = "127.0.0.1:$2"
data_dir = "$work/$1/data"
plugins_dir = "$work/$1/plugins"

[cluster]
name = "$1"
listen = "127.0.0.1:$3"
seeds = [{ name = "a", addr = "127.0.0.1:$seed_port" }]
probe_period_ms = 200
suspect_to_down_after_ms = 1000
fault_injection = true
TOML
  "$weft" serve --config "$work/$1/weft.toml" 2> "$work/$1/log" &
  pids+=($!)
}

a_port=$(free_port); b_port=$(free_port)
start_node a "$a_port" "$seed_port"
start_node b "$b_port" 0
a="http://127.0.0.1:$a_port"; b="http://127.0.0.1:$b_port"

# Waits (at most 30 s) until the node at $1 sees exactly $2 members.
members() { curl -sf "$1/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0; }
wait_members() {
  for _ in $(seq 300); do [ "$(members "$1")" = "$2" ] && return 0; sleep 0.1; done
  echo "node $1 never saw $2 member(s)"; exit 1
}
cart() { curl -sf "$1/ddata/cart" | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["value"]))'; }
add() { curl -sf -XPOST "$1/ddata/cart" -H 'content-type: application/json' -d "{\"op\":\"add\",\"element\":\"$2\"}" > /dev/null; }
remove() { curl -sf -XPOST "$1/ddata/cart" -H 'content-type: application/json' -d "{\"op\":\"remove\",\"element\":\"$2\"}" > /dev/null; }
fault() { curl -sf -XPOST "$1/cluster/faults" -H 'content-type: application/json' -d "$2" > /dev/null; }
# Waits (at most 30 s) until both carts read $1.
wait_cart() {
  for _ in $(seq 300); do
    [ "$(cart "$a" 2>/dev/null)" = "$1" ] && [ "$(cart "$b" 2>/dev/null)" = "$1" ] && return 0
    sleep 0.1
  done
  echo "the carts did not converge to '$1': a has '$(cart "$a")', b has '$(cart "$b")'"; exit 1
}

echo "== two nodes, a and b"
wait_members "$a" 2; wait_members "$b" 2

echo "== a adds milk, b adds eggs"
add "$a" milk; add "$b" eggs
wait_cart "eggs milk"
echo "   a: $(cart "$a")   b: $(cart "$b")"

echo "== a and b are cut off from each other"
fault "$a" '{"fault":"partition","from":["b"]}'
fault "$b" '{"fault":"partition","from":["a"]}'
wait_members "$a" 1; wait_members "$b" 1

echo "== meanwhile a removes eggs, b adds eggs again and adds bread"
remove "$a" eggs
add "$b" eggs; add "$b" bread
echo "   a: $(cart "$a")   b: $(cart "$b")"

echo "== the partition heals"
fault "$a" '{"fault":"heal"}'; fault "$b" '{"fault":"heal"}'
wait_members "$a" 2; wait_members "$b" 2
wait_cart "bread eggs milk"
echo "   a: $(cart "$a")   b: $(cart "$b")"
echo "== converged: b's concurrent add of eggs wins over a's remove (add-wins)"
