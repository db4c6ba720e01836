import sys, copy, time, torch, statistics, collections
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers
import prunekit.graph.dependency as D
import prunekit.structured.pruning as P
torch.set_num_threads(1)
acc = collections.defaultdict(list)
def wrap(mod, name):
    f = getattr(mod, name)
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); acc[name].append(time.perf_counter() - t); return r
    setattr(mod, name, g)
for n in sys.argv[3].split(','):
    wrap(D, n)
name = sys.argv[1]; n = int(sys.argv[2])
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
for i in range(n):
    m = copy.deepcopy(base); ig = output_layers(m, x)
    if i == 1: acc.clear()
    r = P.prune(m, x, ratio=0.5, importance="l2", ignore=ig, inplace=True)
for k, v in acc.items(): print(f"  {k:20s} {sum(v)/(n-1)*1e3:7.3f} ms  calls/prune {len(v)/(n-1):.0f}")
