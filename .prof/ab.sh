#!/bin/bash
# usage: ab.sh N model...   -> median per phase for main and fast-post, alternating runs
N=$1; shift
for m in "$@"; do
  for i in $(seq 1 3); do
    (cd /work/main && PYTHONPATH=src /work/main/.venv/bin/python /work/tools/phases.py $m $N) > /tmp/ab_main_${m}_$i.txt
    (cd /work/wt-fast-post && PYTHONPATH=src /work/main/.venv/bin/python /work/tools/phases.py $m $N) > /tmp/ab_wt_${m}_$i.txt
  done
  /work/main/.venv/bin/python - "$m" <<'PY'
import sys, re, statistics, collections
m = sys.argv[1]
res = {}
for tag in ("main", "wt"):
    acc = collections.defaultdict(list)
    for i in (1, 2, 3):
        for line in open(f"/tmp/ab_{tag}_{m}_{i}.txt"):
            g = re.match(r"\s+(\S+)\s+([\d.]+) ms", line)
            if g: acc[g[1]].append(float(g[2]))
            g = re.match(r".*total ([\d.]+) ms; model forward ([\d.]+)", line)
            if g: acc["TOTAL"].append(float(g[1])); acc["fwd"].append(float(g[2]))
    res[tag] = {k: statistics.median(v) for k, v in acc.items()}
post = ["build_groups", "_member_views", "score_groups", "allocate", "plan_with_indices", "_shallow_clone", "apply_plan", "_output_shapes"]
print(f"{m}:  phase            main    fast-post")
for k in ["TOTAL", "fwd", "trace"] + post:
    print(f"  {k:18s} {res['main'].get(k, 0):7.2f} {res['wt'].get(k, 0):7.2f}")
a = sum(res['main'].get(k, 0) for k in post); b = sum(res['wt'].get(k, 0) for k in post)
print(f"  {'post-trace sum':18s} {a:7.2f} {b:7.2f}   ({a/b:.2f}x)")
PY
done
