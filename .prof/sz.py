import sys, torch
sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
from tests.structured.zoo import ZOO
from structured import output_layers
from prunekit.structured.pruning import analyze
for name in sys.argv[1:]:
    e = [z for z in ZOO if z.name == name][0]
    base = e.build().eval(); x = e.example_inputs()
    a = analyze(base, x, ignore=output_layers(base, x))
    g = a.graph
    print(name, 'members', len(g.members), 'units total', sum(m.units.numel() for m in g.members), 'blocked', len(g.blocked), 'groups', len(g.groups), 'labels', g.trace.space.size, 'modules', len(g.trace.modules), 'params', len(g.trace.params))
