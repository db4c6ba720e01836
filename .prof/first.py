import sys, copy, time, torch, statistics
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from prunekit._inputs import run_model
torch.set_num_threads(1)
name = sys.argv[1]; n = int(sys.argv[2])
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
print(x.shape if hasattr(x,'shape') else '')
rec = {'f1': [], 'f2': [], 'f3':[]}
for i in range(n):
    m = copy.deepcopy(base)
    with torch.no_grad():
        t = time.perf_counter(); run_model(m, x); rec['f1'].append(time.perf_counter() - t)
        t = time.perf_counter(); run_model(m, x); rec['f2'].append(time.perf_counter() - t)
        y = torch.randn(4, 1000, 1000)
        del y
        t = time.perf_counter(); run_model(m, x); rec['f3'].append(time.perf_counter() - t)
for k, v in rec.items():
    print(k, f"{statistics.median(v[1:])*1e3:.3f}")
