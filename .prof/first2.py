import time, torch, statistics, copy
torch.set_num_threads(1)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
x = torch.randn(2, 16, 32, 32)
rec = {'a':[], 'b':[], 'c':[], 'd': []}
with torch.no_grad():
    for i in range(200):
        c = copy.deepcopy(conv)
        t = time.perf_counter(); c(x); rec['a'].append(time.perf_counter() - t)
        t = time.perf_counter(); c(x); rec['b'].append(time.perf_counter() - t)
        x2 = x.clone()
        t = time.perf_counter(); c(x2); rec['c'].append(time.perf_counter() - t)
        c.weight = torch.nn.Parameter(c.weight.index_select(0, torch.arange(8))); c.bias = torch.nn.Parameter(c.bias[:8].clone())
        t = time.perf_counter(); c(x2); rec['d'].append(time.perf_counter() - t)
for k, v in rec.items(): print(k, f"{statistics.median(v[1:])*1e6:.1f} us")
