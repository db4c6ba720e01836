import sys, copy, time, torch, statistics
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers
import prunekit.structured.pruning as P
from prunekit._inputs import run_model
torch.set_num_threads(1)
name = sys.argv[1]; n = int(sys.argv[2]); mode = sys.argv[3]
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
orig = P._output_shapes
rec = {'f1': [], 'f2': []}
def wrapped(m, xx):
    with torch.no_grad():
        if mode == 'contig':
            for p in m.parameters(): p.data.add_(0)
        if mode == 'clone':
            for mod in m.modules():
                for k, p in list(mod._parameters.items()):
                    if p is not None: mod._parameters[k] = torch.nn.Parameter(p.detach().clone())
        t = time.perf_counter(); run_model(m, xx); rec['f1'].append(time.perf_counter() - t)
        t = time.perf_counter(); run_model(m, xx); rec['f2'].append(time.perf_counter() - t)
    return orig(m, xx)
P._output_shapes = wrapped
for i in range(n):
    m = copy.deepcopy(base); ig = output_layers(m, x)
    P.prune(m, x, ratio=0.5, importance="l2", ignore=ig, inplace=True)
for k, v in rec.items():
    if v: print(mode, k, f"{statistics.median(v[1:])*1e3:.3f}")
