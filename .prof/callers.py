import sys, copy, cProfile, pstats, torch
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers, run_prunekit
torch.set_num_threads(1)
name = sys.argv[1]; n = 50
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
ms = [(lambda m: (m, output_layers(m, x)))(copy.deepcopy(base)) for _ in range(n + 1)]
m, ig = ms.pop(); run_prunekit(m, x, ig)
pr = cProfile.Profile(); pr.enable()
for m, ig in ms: run_prunekit(m, x, ig)
pr.disable()
st = pstats.Stats(pr); st.print_callers(sys.argv[2])
