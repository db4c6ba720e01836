"""Tracing and dependency groups: which channels of which tensors must be removed together."""

from prunekit.graph.ops import OpCall, OpNotMappable, register_op

__all__ = ["OpCall", "OpNotMappable", "register_op"]
