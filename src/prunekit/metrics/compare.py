"""Before/after ratios of two profiles (after / before: 0.5 means halved)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from prunekit.metrics.profile import LayerProfile, Profile

__all__ = ["ProfileDiff", "compare"]

# (label, Profile attribute) for the summary rows, in display order
_METRICS: tuple[tuple[str, str], ...] = (
    ("params", "total_params"),
    ("non-zero params", "nonzero_params"),
    ("MACs", "macs"),
    ("sparse MACs", "sparse_macs"),
    ("size fp32 (dense)", "bytes_fp32"),
    ("size fp32 (compressed)", "bytes_sparse_fp32"),
    ("size fp16 (compressed)", "bytes_sparse_fp16"),
)


@dataclass(frozen=True)
class ProfileDiff:
    """A before and an after profile with the ratios that matter for a pruning run.

    ``size_ratio`` compares the compressed fp32 sizes, the bytes a sparse checkpoint needs
    (for a dense model the compressed size equals the dense size).
    """

    before: Profile
    after: Profile

    @property
    def params_ratio(self) -> float:
        return _ratio(self.after.total_params, self.before.total_params)

    @property
    def nonzero_ratio(self) -> float:
        return _ratio(self.after.nonzero_params, self.before.nonzero_params)

    @property
    def macs_ratio(self) -> float:
        return _ratio(self.after.macs, self.before.macs)

    @property
    def sparse_macs_ratio(self) -> float:
        return _ratio(self.after.sparse_macs, self.before.sparse_macs)

    @property
    def size_ratio(self) -> float:
        return _ratio(self.after.bytes_sparse_fp32, self.before.bytes_sparse_fp32)

    def ratios(self) -> dict[str, float]:
        """Every metric's after/before ratio, keyed by Profile attribute name."""
        return {
            attr: _ratio(getattr(self.after, attr), getattr(self.before, attr))
            for _, attr in _METRICS
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: both profiles and the ratios."""
        return {"before": self.before.to_dict(), "after": self.after.to_dict(),
                "ratios": {k: _finite_or_none(v) for k, v in self.ratios().items()}}

    def table(self, title: str | None = "Before / after") -> Table:
        """A rich Table: one row per metric with before, after and after/before."""
        table = Table(title=title)
        table.add_column("metric")
        for header in ("before", "after", "after / before"):
            table.add_column(header, justify="right")
        for label, attr in _METRICS:
            before, after = getattr(self.before, attr), getattr(self.after, attr)
            table.add_row(label, f"{before:,}", f"{after:,}", f"{_ratio(after, before):.3f}×")
        return table


    def layer_table(self, title: str | None = "Per layer, before → after") -> Table:
        """A rich Table matching layers by name: params, non-zeros and sparse MACs before and
        after (a layer removed by surgery shows "-" after; a new one "-" before)."""
        before = {layer.name: layer for layer in self.before.layers}
        after = {layer.name: layer for layer in self.after.layers}
        names = list(before) + [name for name in after if name not in before]
        table = Table(title=title)
        table.add_column("layer")
        for header in ("params", "non-zeros", "sparse MACs"):
            table.add_column(header, justify="right")
        for name in names:
            old, new = before.get(name), after.get(name)
            table.add_row(
                name or "(model)",
                *(f"{_count(old, attr)} → {_count(new, attr)}"
                  for attr in ("params", "nonzeros", "sparse_macs")),
            )
        return table


def compare(before: Profile, after: Profile) -> ProfileDiff:
    """Pair two profiles (e.g. the model before and after pruning) for ratios and a table."""
    return ProfileDiff(before=before, after=after)


def _ratio(after: int, before: int) -> float:
    """after / before; 1.0 when both are zero, inf when only ``before`` is zero."""
    if before == 0:
        return 1.0 if after == 0 else float("inf")
    return after / before


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity; a ratio against zero becomes null."""
    return None if value == float("inf") else value


def _count(layer: LayerProfile | None, attr: str) -> str:
    return "-" if layer is None else f"{getattr(layer, attr):,}"
