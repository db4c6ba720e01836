"""Tracing and dependency groups: which channels of which tensors must be removed together."""

from prunekit.graph.coverage import Coverage, CoverageEntry
from prunekit.graph.dependency import DependencyGraph, Group, Member, build_groups
from prunekit.graph.ops import OpCall, OpNotMappable, register_op
from prunekit.graph.trace import Trace, TraceContext, trace

__all__ = [
    "Coverage",
    "CoverageEntry",
    "DependencyGraph",
    "Group",
    "Member",
    "OpCall",
    "OpNotMappable",
    "Trace",
    "TraceContext",
    "build_groups",
    "register_op",
    "trace",
]
