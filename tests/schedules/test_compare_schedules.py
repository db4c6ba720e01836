"""`prunekit demo --compare-schedules` end to end on a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunekit.cli.compare_schedules import CompareConfig, run_compare, schedule_for
from prunekit.cli.main import main
from prunekit.errors import ConfigError


def test_compare_rows_reach_the_target_sparsity(tmp_path: Path) -> None:
    cfg = CompareConfig(dataset="digits", limit=300, dense_epochs=1, epochs=1, scratch=False,
                        out=str(tmp_path))
    results = run_compare(cfg)
    rows = results["rows"]
    assert [(r["method"], r["distill"]) for r in rows[1:]] == [
        (m, d) for m in ("one-shot", "iterative", "gradual", "rigl") for d in ("no", "yes")]
    for row in rows[1:]:
        assert row["sparsity"] == pytest.approx(0.9, abs=1e-3)
        assert 0.0 <= row["accuracy"] <= 1.0 and row["seconds"] > 0
    saved = json.loads((tmp_path / "compare_schedules.json").read_text())
    assert saved["rows"] == rows


def test_cli_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[CompareConfig] = []
    monkeypatch.setattr("prunekit.cli.compare_schedules.run_compare",
                        lambda cfg: seen.append(cfg) or {})
    assert main(["demo", "--compare-schedules", "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen and seen[0].out == str(tmp_path) and seen[0].sparsity == 0.9


def test_schedules_end_within_budget_and_errors() -> None:
    for method in ("one-shot", "iterative", "gradual", "rigl"):
        schedule = schedule_for(method, 0.9, 400, 50)
        assert max(s for t in range(401) for due, s in [schedule(t)] if due) == \
            pytest.approx(0.9)
    with pytest.raises(ConfigError, match="method"):
        schedule_for("magic", 0.9, 10, 5)
    with pytest.raises(ConfigError, match="sparsity"):
        CompareConfig(sparsity=1.0)
