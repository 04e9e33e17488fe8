#!/usr/bin/env bash
# Starts a local 3-node TinkerDB cluster on loopback for trying it out:
# node N serves clients on 127.0.0.1:75N1... see the table it prints.
# Data in ./tinkerdb-cluster/node-N; logs beside. Stop with: scripts/cluster-up.sh stop
#
#   scripts/cluster-up.sh            build (release) and start 3 nodes, 2 cores each
#   CORES=1 scripts/cluster-up.sh    one core (one Raft group) per node
#   scripts/cluster-up.sh join 4     start node 4 empty; it joins through node 1
#   scripts/cluster-up.sh stop       stop them (kill -TERM)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CLUSTER_DIR:-./tinkerdb-cluster}
cores=${CORES:-2}
if [ "${1:-}" = stop ]; then
  for pid in "$dir"/node-*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null && rm -f "$pid"; done
  echo "stopped"; exit 0
fi
if [ "${1:-}" = join ]; then
  # Start node N (4-9) empty and have it join through node 1's admin API.
  id=${2:?usage: scripts/cluster-up.sh join N}
  target/release/tinkerdb --node-id "$id" --raft-listen "127.0.0.1:76${id}0" --join 127.0.0.1:7512 \
    --cores "$cores" --listen "127.0.0.1:75${id}1" --admin-listen "127.0.0.1:75${id}2" \
    --resp-listen "127.0.0.1:75${id}3" \
    --data-dir "$dir/node-$id" >"$dir/node-$id.out" 2>"$dir/node-$id.log" &
  echo $! >"$dir/node-$id.pid"
  for _ in $(seq 700); do grep -q "ready" "$dir/node-$id.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "ready" "$dir/node-$id.out" || { cat "$dir/node-$id.log"; echo "node $id did not join"; exit 1; }
  echo "node $id joined: clients 127.0.0.1:75${id}1  Redis 127.0.0.1:75${id}3  dashboard http://127.0.0.1:75${id}2/"
  sleep 1 # a first round of health probes
  target/release/tinker --admin "127.0.0.1:75${id}2" cluster status
  exit 0
fi
cargo build --release -q --bin tinkerdb --bin tinker
mkdir -p "$dir"
peers="1=127.0.0.1:7610,2=127.0.0.1:7620,3=127.0.0.1:7630"
for id in 1 2 3; do
  target/release/tinkerdb --node-id "$id" --peers "$peers" --cores "$cores" \
    --listen "127.0.0.1:75${id}1" --admin-listen "127.0.0.1:75${id}2" \
    --resp-listen "127.0.0.1:75${id}3" \
    --data-dir "$dir/node-$id" >"$dir/node-$id.out" 2>"$dir/node-$id.log" &
  echo $! >"$dir/node-$id.pid"
done
for id in 1 2 3; do
  for _ in $(seq 100); do grep -q "ready" "$dir/node-$id.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "ready" "$dir/node-$id.out" || { cat "$dir/node-$id.log"; echo "node $id did not start"; exit 1; }
done
cat <<TEXT
3-node cluster up ($cores core(s) per node, one Raft group per core, replicated on all 3):
  node 1: clients 127.0.0.1:7511  Redis 127.0.0.1:7513  dashboard http://127.0.0.1:7512/
  node 2: clients 127.0.0.1:7521  Redis 127.0.0.1:7523  dashboard http://127.0.0.1:7522/
  node 3: clients 127.0.0.1:7531  Redis 127.0.0.1:7533  dashboard http://127.0.0.1:7532/
Try:
  target/release/tinker --addr 127.0.0.1:7511 set hello world
  target/release/tinker --addr 127.0.0.1:7531 get hello
  redis-cli -p 7523 incr visits                # any node, either protocol
  target/release/tinker --admin 127.0.0.1:7512 cluster status   # nodes, health, shards, lag
  scripts/cluster-up.sh join 4                  # a fourth node joins (then: tinker cluster remove 4)
  kill -9 \$(cat $dir/node-1.pid)               # then keep using nodes 2 and 3
Stop: scripts/cluster-up.sh stop
TEXT
