#!/usr/bin/env bash
# The OR-Set shopping cart across two weft nodes: concurrent adds and removes, a partition, and
# the heal that makes both carts converge with add-wins semantics. Run from anywhere:
#   bash examples/shopping-cart/run.sh
source "$(dirname "$0")/../cluster.sh"
build_weft
start_node a
start_node b
a=$url_a; b=$url_b

cart() { curl -sf "$1/ddata/cart" | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["value"]))'; }
add() { curl -sf -XPOST "$1/ddata/cart" -H 'content-type: application/json' -d "{\"op\":\"add\",\"element\":\"$2\"}" > /dev/null; }
remove() { curl -sf -XPOST "$1/ddata/cart" -H 'content-type: application/json' -d "{\"op\":\"remove\",\"element\":\"$2\"}" > /dev/null; }
carts() { echo "a: $(cart "$a")   b: $(cart "$b")"; }
# Waits (at most 30 s) until both carts read $1.
wait_cart() { wait_for "a: $1   b: $1" carts; }

echo "== two nodes, a and b"
wait_members "$a" 2; wait_members "$b" 2

echo "== a adds milk, b adds eggs"
add "$a" milk; add "$b" eggs
wait_cart "eggs milk"
echo "   $(carts)"

echo "== a and b are cut off from each other"
fault "$a" '{"fault":"partition","from":["b"]}'
fault "$b" '{"fault":"partition","from":["a"]}'
wait_members "$a" 1; wait_members "$b" 1

echo "== meanwhile a removes eggs, b adds eggs again and adds bread"
remove "$a" eggs
add "$b" eggs; add "$b" bread
echo "   $(carts)"

echo "== the partition heals"
fault "$a" '{"fault":"heal"}'; fault "$b" '{"fault":"heal"}'
wait_members "$a" 2; wait_members "$b" 2
wait_cart "bread eggs milk"
echo "   $(carts)"
echo "== converged: b's concurrent add of eggs wins over a's remove (add-wins)"
