import sys, copy, cProfile, pstats, torch
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers, run_prunekit
import prunekit.structured.pruning as P
torch.set_num_threads(1)
name = sys.argv[1]; n = 50
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
pr = cProfile.Profile()
for ph in ['build_groups', 'score_groups', '_member_views', 'allocate', 'plan_with_indices', '_shallow_clone', 'apply_plan', '_output_shapes', '_root_copy']:
    f = getattr(P, ph)
    def g(*a, _f=f, **k):
        pr.enable()
        try: return _f(*a, **k)
        finally: pr.disable()
    setattr(P, ph, g)
ms = [(lambda m: (m, output_layers(m, x)))(copy.deepcopy(base)) for _ in range(n + 1)]
m, ig = ms.pop(); run_prunekit(m, x, ig)
pr = cProfile.Profile()
for m, ig in ms: run_prunekit(m, x, ig)
st = pstats.Stats(pr); st.sort_stats(sys.argv[2] if len(sys.argv) > 2 else 'tottime').print_stats(int(sys.argv[3]) if len(sys.argv) > 3 else 40)
