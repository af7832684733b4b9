#!/usr/bin/env bash
# A counter replicated on three weft nodes: every replica takes increments at once, even while
# cut off from the others, and all three converge to the exact sum. Run from anywhere:
#   bash examples/replicated-counter/run.sh
source "$(dirname "$0")/../cluster.sh"
build_weft counter
types='[entities.tally]
plugin = "counter"
replication = { replicas = ["a", "b", "c"], pull_interval_ms = 200 }'
start_node a "$types"; start_node b "$types"; start_node c "$types"
a=$url_a; b=$url_b; c=$url_c

increment() { curl -sf -XPOST "$1/entities/tally/t1" -H 'content-type: application/json' -d "{\"op\":\"increment\",\"by\":$2}" > /dev/null; }
value() { curl -sf "$1/entities/tally/t1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"]["value"])'; }
values() { echo "a: $(value "$a")   b: $(value "$b")   c: $(value "$c")"; }
# Waits (at most 30 s) until every replica holds $1.
wait_value() { wait_for "a: $1   b: $1   c: $1" values; }

echo "== three nodes, a replica of tally/t1 on each"
for node in "$a" "$b" "$c"; do wait_members "$node" 3; done

echo "== a, b and c increment at the same time (by 1, 2 and 3, ten times each)"
for _ in $(seq 10); do
  increment "$a" 1 & p1=$!; increment "$b" 2 & p2=$!; increment "$c" 3 & p3=$!
  wait "$p1" "$p2" "$p3"
done
wait_value 60
echo "   $(values)"

echo "== c is cut off from a and b"
fault "$c" '{"fault":"partition","from":["a","b"]}'
fault "$a" '{"fault":"partition","from":["c"]}'; fault "$b" '{"fault":"partition","from":["c"]}'
wait_members "$a" 2; wait_members "$c" 1

echo "== meanwhile a adds 100 and c adds 1000: each side sees only its own"
increment "$a" 100; increment "$c" 1000
sleep 0.5
echo "   $(values)"

echo "== the partition heals"
for node in "$a" "$b" "$c"; do fault "$node" '{"fault":"heal"}'; done
wait_value 1160
echo "   $(values)"
echo "== converged: every replica folded every increment exactly once"
echo "   a's own stream: $(curl -sf "$a/entities/tally/t1/events?replica=a" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["events"]))') events"
