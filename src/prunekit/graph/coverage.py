"""Coverage report: which parameters a structured prune can shrink, and why the rest cannot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from prunekit.graph.dependency import DependencyGraph

__all__ = ["Coverage", "CoverageEntry", "coverage_report"]

Status = Literal["prunable", "fixed", "unused"]


@dataclass(frozen=True)
class CoverageEntry:
    """One parameter: ``prunable`` (in a group), ``fixed`` (seen, kept whole) or ``unused``."""

    name: str
    status: Status
    reason: str


@dataclass(frozen=True)
class Coverage:
    entries: tuple[CoverageEntry, ...]

    @property
    def prunable(self) -> list[str]:
        return [e.name for e in self.entries if e.status == "prunable"]

    @property
    def fixed(self) -> dict[str, str]:
        """Parameter name -> reason, for every parameter that is not prunable."""
        return {e.name: e.reason for e in self.entries if e.status != "prunable"}

    def __str__(self) -> str:
        lines = [f"{len(self.prunable)}/{len(self.entries)} parameters are in a prunable group"]
        lines += [f"  {e.name}: {e.status} ({e.reason})" for e in self.entries
                  if e.status != "prunable"]
        return "\n".join(lines)

    def to_dict(self) -> list[dict[str, str]]:
        return [{"name": e.name, "status": e.status, "reason": e.reason} for e in self.entries]


def coverage_report(model: nn.Module, graph: DependencyGraph) -> Coverage:
    """Classify every parameter of ``model`` (shared ones once)."""
    # a group of one unit keeps it (every group keeps one): its channels are not prunable
    single = {u: f"its channels form a single unit (a width of one, or channels the code "
                 f"ties together), which every prune keeps ({group.describe()})"
              for group in graph.groups if group.size == 1 for u in group.units.tolist()}
    prunable_set = {u for g in graph.groups if g.size > 1 for u in g.units.tolist()}
    status: dict[str, tuple[bool, set[str]]] = {}
    for member in graph.members:
        if member.kind == "attr":
            continue
        units = set(member.units.reshape(-1).tolist())
        hit = not prunable_set.isdisjoint(units)
        reasons = {graph.blocked.get(u) or single.get(u) or "not produced by a prunable layer"
                   for u in units - prunable_set}
        prev = status.get(member.name, (False, set()))
        status[member.name] = (prev[0] or hit, prev[1] | reasons)
    entries = []
    for name, _ in model.named_parameters():
        key = name
        while key and key not in status:
            key = key.rpartition(".")[0]
        owner = name.rpartition(".")[0]
        if key in status:
            ok, reasons = status[key]
            reason = "; ".join(sorted(reasons)) or "blocked"
            if ok:  # a layer may shrink along one dim and keep another whole: say why
                reason = "in a dependency group" + (f"; kept whole in part: {reason}"
                                                    if reasons else "")
            entries.append(CoverageEntry(name, "prunable" if ok else "fixed", reason))
        elif name in graph.trace.params:
            ids = graph.trace.space.find(graph.trace.params[name].ids).unique().tolist()
            why = sorted({graph.blocked.get(int(u), "not coupled to any layer") for u in ids})
            if not ids:
                why = ["it has no elements (an axis of size 0): nothing to cut"]
            entries.append(CoverageEntry(name, "fixed", "; ".join(why[:3])))
        elif owner in graph.trace.modules:
            entries.append(CoverageEntry(name, "fixed", "its layer has no prunable dimension"))
        else:
            entries.append(CoverageEntry(
                name, "unused",
                "not read by the forward pass on the example inputs, or only inside an "
                "op that no handler maps"))
    return Coverage(tuple(entries))
