import sys, copy, cProfile, pstats, torch
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers, run_prunekit
torch.set_num_threads(1)
name = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 50
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
ms = []
for i in range(n + 1):
    m = copy.deepcopy(base); ms.append((m, output_layers(m, x)))
run_prunekit(*ms[0], ) if False else None
m, ig = ms.pop(); run_prunekit(m, x, ig)
pr = cProfile.Profile()
pr.enable()
for m, ig in ms: run_prunekit(m, x, ig)
pr.disable()
st = pstats.Stats(pr); st.sort_stats(sys.argv[3] if len(sys.argv) > 3 else 'cumulative').print_stats(int(sys.argv[4]) if len(sys.argv) > 4 else 70)
