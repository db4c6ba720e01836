import sys, copy, time, torch, statistics, collections, resource
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers
import prunekit.structured.pruning as P
from prunekit._inputs import run_model
torch.set_num_threads(1)
name = sys.argv[1]; n = int(sys.argv[2])
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
orig = P._output_shapes
rec = collections.defaultdict(list)
def wrapped(m, xx):
    for tag in ('a', 'b'):
        f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        with torch.no_grad(): run_model(m, x)
        rec[tag].append(time.perf_counter() - t)
        rec[tag+'flt'].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    return orig(m, xx)
P._output_shapes = wrapped
for i in range(n):
    m = copy.deepcopy(base); ig = output_layers(m, x)
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    P.prune(m, x, ratio=0.5, importance="l2", ignore=ig, inplace=True)
    rec['prune_flt'].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
for k, v in rec.items():
    print(k, f"{statistics.median(v[1:])*(1e3 if 'flt' not in k else 1):.3f}")
