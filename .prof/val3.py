import sys, copy, time, torch, statistics, collections
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
def timed(m, tag):
    acc = collections.defaultdict(float); st = {}
    hs = []
    for mod in m.modules():
        if len(mod._modules) == 0:
            hs.append(mod.register_forward_pre_hook(lambda mm, i: st.__setitem__(id(mm), time.perf_counter())))
            hs.append(mod.register_forward_hook(lambda mm, i, o: acc.__setitem__(type(mm).__name__, acc[type(mm).__name__] + time.perf_counter() - st[id(mm)])))
    t = time.perf_counter()
    with torch.no_grad(): run_model(m, x)
    acc['TOTAL'] = time.perf_counter() - t
    for h in hs: h.remove()
    for k, v in acc.items(): rec[tag, k].append(v)
def wrapped(m, xx):
    timed(m, 'first'); timed(m, 'second')
    return orig(m, xx)
P._output_shapes = wrapped
for i in range(n):
    m = copy.deepcopy(base); ig = output_layers(m, x)
    P.prune(m, x, ratio=0.5, importance="l2", ignore=ig, inplace=True)
for k, v in sorted(rec.items(), key=lambda kv: kv[0][::-1]):
    print(k, f"{statistics.median(v[1:])*1e3:.3f}")
