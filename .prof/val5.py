import sys, copy, time, torch, statistics, collections
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers
import prunekit.structured.pruning as P
from prunekit._inputs import run_model
from prunekit.graph.trace import walk_tensors
torch.set_num_threads(1)
name = sys.argv[1]; n = int(sys.argv[2])
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
orig = P._output_shapes
rec = collections.defaultdict(list)
state = {'i': 0}
def bare(m, xx):
    with torch.no_grad(): out = run_model(m, xx)
    return [(path, tuple(t.shape)) for path, t in walk_tensors(out)]
def wrapped(m, xx):
    v = ['orig', 'bare'][state['i'] % 2]
    t = time.perf_counter()
    r = (orig if v == 'orig' else bare)(m, xx)
    rec[v].append(time.perf_counter() - t)
    return r
P._output_shapes = wrapped
for i in range(n):
    state['i'] = i
    m = copy.deepcopy(base); ig = output_layers(m, x)
    P.prune(m, x, ratio=0.5, importance="l2", ignore=ig, inplace=True)
for k, v in rec.items():
    print(k, f"{statistics.median(v[1:])*1e3:.3f}")
