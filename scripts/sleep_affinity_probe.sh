#!/usr/bin/env bash
# Does the CPU the sleeping thread runs on set what the driver charges per handle? Section g's first
# sleeps alternate between two speeds from run to run (docs/bench/h200-20261130-420072a/). This records
# the machine's CPU, NUMA and GPU topology, then runs `gpu-arena bench --only sleep` ROUNDS times on each
# CPU set (every NUMA node's CPUs, or one core of each half where there is one node), alternating, and
# unpinned, each run's section g appended to $OUT/sleep-SET.log.
#
#   bash scripts/sleep_affinity_probe.sh [ROUNDS]     (on the GPU machine, after gpu_pack.sh --bin gpu-arena)
set -u
rounds=${1:-3}
out=${OUT:-/tmp/sleep-affinity}; mkdir -p "$out"
bin=.gpu/bin/gpu-arena
{ nvidia-smi topo -m; echo; lscpu; echo; lscpu -p=CPU,CORE,SOCKET,NODE; echo; numactl -H 2>&1;
  for f in /sys/bus/pci/devices/*/numa_node; do d=$(dirname "$f"); [ -f "$d/vendor" ] && grep -q 0x10de "$d/vendor" && echo "$d numa_node $(cat "$f") local_cpulist $(cat "$d/local_cpulist" 2>/dev/null)"; done
} > "$out/topology.txt" 2>&1
nodes=$(lscpu -p=NODE | grep -v '^#' | sort -u | tr '\n' ' ')
sets=()
if [ "$(echo $nodes | wc -w)" -gt 1 ]; then
  for n in $nodes; do sets+=("node$n:$(lscpu -p=CPU,NODE | grep -v '^#' | awk -F, -v n="$n" '$2==n{print $1}' | paste -sd, -)"); done
else
  last=$(( $(nproc) - 1 ))
  sets+=("cpu0:0" "cpu$((last / 2)):$((last / 2))" "cpu$last:$last")
fi
sets+=("unpinned:")
echo "sets: ${sets[*]}" | tee "$out/sets.txt"
for r in $(seq "$rounds"); do
  for s in "${sets[@]}"; do
    name=${s%%:*}; cpus=${s#*:}
    echo "== round $r $name ${cpus:-all}" >> "$out/sleep-$name.log"
    if [ -n "$cpus" ]; then
      timeout 120 taskset -c "$cpus" "$bin" bench --only sleep --markdown >> "$out/sleep-$name.log" 2>&1
    else
      timeout 120 "$bin" bench --only sleep --markdown >> "$out/sleep-$name.log" 2>&1
    fi
  done
done
