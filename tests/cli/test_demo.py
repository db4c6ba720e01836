"""``prunekit demo`` end to end on a small budget (slow: it trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunekit.cli.demo import DemoConfig, run_demo
from prunekit.errors import ConfigError


@pytest.mark.slow
def test_demo_runs_end_to_end_on_digits(tmp_path: Path) -> None:
    cfg = DemoConfig(dataset="digits", out=str(tmp_path), epochs=3, finetune_epochs=1,
                     sparsities=(0.5, 0.9), threshold=0.1, progress=False)
    results = run_demo(cfg)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rows"] == json.loads(json.dumps(results["rows"]))
    names = [row["name"] for row in results["rows"]]
    assert names[0] == "dense" and len(names) == 4
    dense, half, ninety = results["rows"][:3]
    assert dense["accuracy"] > 0.5  # 3 epochs on 8×8 digits
    assert half["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert ninety["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert dense["params"] == ninety["params"] == 61_706
    assert ninety["nonzeros"] < 0.15 * dense["nonzeros"]
    assert ninety["bytes_sparse"] < 0.3 * dense["bytes_dense"]


def test_demo_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="sparsities"):
        DemoConfig(sparsities=(0.5, 1.2))
    with pytest.raises(ConfigError, match="epochs"):
        DemoConfig(epochs=0)
