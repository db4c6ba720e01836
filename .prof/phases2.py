import sys, copy, time, torch, statistics, collections
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers, run_prunekit
import prunekit.structured.pruning as P
torch.set_num_threads(1)
acc = collections.defaultdict(list)
def wrap(mod, name):
    f = getattr(mod, name)
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); acc[name].append(time.perf_counter() - t); return r
    setattr(mod, name, g)
for n in ['trace', 'build_groups', 'score_groups', '_member_views', 'allocate', 'plan_with_indices', '_shallow_clone', 'apply_plan', '_output_shapes', '_root_copy', 'get_group_criterion', 'coverage_report']:
    wrap(P, n)
import prunekit.graph.dependency as D
for n in ["_components", "_tie_shared_weights", "_find_all"]: wrap(D, n)
name = sys.argv[1]; n = int(sys.argv[2])
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
tot = []
for i in range(n + 1):
    m = copy.deepcopy(base); ig = output_layers(m, x)
    if i == 0: acc.clear()
    t = time.perf_counter(); run_prunekit(m, x, ig); tot.append(time.perf_counter() - t)
    if i == 0: acc.clear()
tot = tot[1:]
with torch.no_grad():
    fw = []
    for _ in range(n):
        t = time.perf_counter(); base(x) if not isinstance(x, dict) else base(**x); fw.append(time.perf_counter() - t)
print(f"{name}: total {statistics.median(tot)*1e3:.2f} ms; model forward {statistics.median(fw)*1e3:.2f}")
for k, v in acc.items():
    s = sum(v) / n
    print(f"  {k:20s} {s*1e3:7.2f} ms")
