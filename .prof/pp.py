import sys, copy, cProfile, pstats, torch
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers, run_prunekit
import prunekit.structured.pruning as P
torch.set_num_threads(1)
name = sys.argv[1]; phase = sys.argv[2]; n = 50
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
pr = cProfile.Profile()
f = getattr(P, phase)
def g(*a, **k):
    pr.enable()
    try: return f(*a, **k)
    finally: pr.disable()
setattr(P, phase, g)
for i in range(n):
    m = copy.deepcopy(base); ig = output_layers(m, x)
    run_prunekit(m, x, ig)
st = pstats.Stats(pr); st.sort_stats(sys.argv[3] if len(sys.argv) > 3 else 'tottime').print_stats(int(sys.argv[4]) if len(sys.argv) > 4 else 40)
