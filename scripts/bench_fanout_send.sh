#!/usr/bin/env bash
# Broadcast fan-out, the two send paths side by side: PAIRS pairs of runs
# of `pinion bench fanout`, writev then io_uring in each pair (a fresh hub
# per run, started by the bench with --fanout-send), one JSON file per run
# in OUT, then the medians (hub CPU per delivery, and hub + softirq).
#
#   cargo build --release -p pinion-cli
#   N=19000 PAIRS=5 scripts/bench_fanout_send.sh
set -euo pipefail
N=${N:-19000}
PAIRS=${PAIRS:-5}
OUT=${OUT:-$(mktemp -d /tmp/pinion-fanout-send.XXXXXX)}
BIN=${BIN:-target/release/pinion}
for i in $(seq 1 "$PAIRS"); do
  for m in writev io_uring; do
    echo "== pair $i: $m ($(date -u +%T) UTC)"
    "$BIN" bench fanout --connections "$N" --runs 1 --no-progress \
      --hub-arg=--fanout-send=$m --json "$OUT/$m-$i.json" | grep -E "run 1/1|CONTENDED" || true
  done
done
python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
rows = {}
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    d = json.load(open(f))
    mode = d["args"]["hub_arg"][0].split("=")[1]
    for r in d["results"]:
        for run in r["runs"]:
            s = run["steady"]
            hub = s["hub_cpu_us_per_delivery"]
            softirq = hub * s["softirq_cpu_pct"] / s["hub_cpu_pct"]
            rows.setdefault(mode, []).append((hub, hub + softirq, s["other_cpu_pct"], run["missing"]))
for mode, v in sorted(rows.items()):
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"{mode:8} {len(v)} runs: hub CPU per delivery median {med(0):.2f} µs "
          f"[{min(x[0] for x in v):.2f}-{max(x[0] for x in v):.2f}], hub + softirq {med(1):.2f} µs, "
          f"other processes {med(2):.0f}% of a core, missing {sum(x[3] for x in v)}")
PY
echo "JSON in $OUT"
