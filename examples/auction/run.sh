#!/usr/bin/env bash
# An auction replicated on three weft nodes, with the highest-bid resolver: two bids placed
# concurrently on cut-off replicas are both accepted, and when the partition heals every replica
# keeps the higher one. Run from anywhere:
#   bash examples/auction/run.sh
source "$(dirname "$0")/../cluster.sh"
build_weft auction highest-bid
types='[entities.lot]
plugin = "auction"
replication = { replicas = ["a", "b", "c"], resolver = "highest-bid", pull_interval_ms = 200 }'
start_node a "$types"; start_node b "$types"; start_node c "$types"
a=$url_a; b=$url_b; c=$url_c

bid() { curl -s -XPOST "$1/entities/lot/1" -H 'content-type: application/json' -d "{\"op\":\"bid\",\"bidder\":\"$2\",\"amount\":$3}" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r.get("error",{}).get("message") or "accepted")'; }
highest() { curl -sf "$1/entities/lot/1" | python3 -c 'import json,sys; h=json.load(sys.stdin)["state"]["highest"]; print(str(h["bidder"]) + " " + str(h["amount"]) if h else "none")'; }
highests() { echo "a: $(highest "$a")   b: $(highest "$b")   c: $(highest "$c")"; }
wait_highest() { wait_for "a: $1   b: $1   c: $1" highests; }

echo "== three nodes, a replica of lot/1 on each"
for node in "$a" "$b" "$c"; do wait_members "$node" 3; done

echo "== ann bids 100 at a"
echo "   $(bid "$a" ann 100)"
wait_highest "ann 100"
echo "   $(highests)"
echo "== bob bids 90 at b: refused, it does not beat ann's"
echo "   $(bid "$b" bob 90)"

echo "== c is cut off from a and b"
fault "$c" '{"fault":"partition","from":["a","b"]}'
fault "$a" '{"fault":"partition","from":["c"]}'; fault "$b" '{"fault":"partition","from":["c"]}'
wait_members "$a" 2; wait_members "$c" 1

echo "== cat bids 150 at a; then dan bids 120 at c (later, but concurrent: c has not seen cat's)"
echo "   cat: $(bid "$a" cat 150)"
echo "   dan: $(bid "$c" dan 120)"
echo "   $(highests)"

echo "== the partition heals: the resolver drops dan's concurrent, lower bid everywhere"
for node in "$a" "$b" "$c"; do fault "$node" '{"fault":"heal"}'; done
wait_highest "cat 150"
echo "   $(highests)"
echo "== converged on the highest bid (with last-writer-wins dan's later bid would have won)"
