import sys, copy, torch, collections, traceback
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers, run_prunekit
import prunekit.structured.pruning as P
name = sys.argv[1]
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
m = copy.deepcopy(base); ig = output_layers(m, x); run_prunekit(m, x, ig)
orig = torch.nn.Module.__getattr__
miss = collections.Counter()
def ga(self, item):
    try: return orig(self, item)
    except AttributeError:
        f = traceback.extract_stack(limit=3)[0]
        miss[(item, f.filename.split('/')[-1], f.lineno)] += 1; raise
torch.nn.Module.__getattr__ = ga
m = copy.deepcopy(base); ig = output_layers(m, x)
miss.clear()
run_prunekit(m, x, ig)
for k, v in miss.most_common(20): print(v, k)
