import sys, copy, time, torch, statistics, collections, re, inspect, textwrap
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers
import importlib; D = importlib.import_module(sys.argv[4] if len(sys.argv) > 4 else "prunekit.graph.dependency")
import prunekit.structured.pruning as P
torch.set_num_threads(1)
fname = sys.argv[3]
src = textwrap.dedent(inspect.getsource(getattr(D, fname)))
lines = src.split('\n')
out = []
T = collections.defaultdict(float)
k = 0
for ln in lines:
    s = ln.strip()
    ind = len(ln) - len(ln.lstrip())
    if k > 0 and s and ind == 4 and not s.startswith(('return', 'def ', '"""', 'for ', 'if ', 'else', 'elif', ')', ']', 'try', 'except', 'finally', 'while')) and not prev_cont and '"""' not in s:
        out.append(' ' * 4 + f'_T[{k}] += _pc() - _t0; _t0 = _pc()')
    out.append(ln)
    prev_cont = s.endswith((',', '(', '[', '\\', '{')) or s.count('(') > s.count(')')
    k += 1
    if k == 1:
        pass
body = '\n'.join(out)
bl = body.split('\n'); ds = [i for i, l in enumerate(bl) if '"""' in l]
import re as _re
sig = next(i for i, l in enumerate(bl) if _re.search(r'\)\s*(->.*)?:\s*$', l))
at = (ds[1] if len(ds) > 1 and bl[ds[0]].count('"""') == 1 else ds[0]) if ds and ds[0] == sig + 1 else sig
bl.insert(at + 1, '    _t0 = _pc()'); body = '\n'.join(bl)
ns = dict(D.__dict__); ns['_T'] = T; ns['_pc'] = time.perf_counter
exec(body, ns)
setattr(D, fname, ns[fname]); setattr(P, fname, ns[fname]) if hasattr(P, fname) else None
name = sys.argv[1]; n = int(sys.argv[2])
e = [z for z in ZOO if z.name == name][0]
base = e.build().eval(); x = e.example_inputs()
for i in range(n):
    m = copy.deepcopy(base); ig = output_layers(m, x)
    if i == 1: T.clear()
    P.prune(m, x, ratio=0.5, importance="l2", ignore=ig, inplace=True)
for i, ln in enumerate(lines):
    print(f"{T.get(i, 0)/(n-1)*1e6:8.1f} us | {ln}" if i in T else f"           | {ln}")
