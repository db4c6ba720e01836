"""prunekit sparsify with data-aware criteria: --criterion/--importance, --dataset, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit.cli.main import main

BASE = ["sparsify", "--model", "prunekit.zoo:lenet5", "--input-shape", "1,1,32,32",
        "--sparsity", "0.9"]


@pytest.mark.parametrize("flag", ["--criterion", "--importance"])
def test_data_criterion_with_a_dataset(tmp_path: Path, flag: str) -> None:
    out = tmp_path / "o"
    assert main([*BASE, flag, "fisher", "--dataset", "digits", "--calib-batches", "2",
                 "--out", str(out)]) == 0
    assert any(out.iterdir())


def test_data_criterion_without_a_dataset_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, "--criterion", "taylor", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "--criterion taylor needs calibration data" in err and "--dataset" in err
    assert not (tmp_path / "o").exists()


def test_dataset_with_a_data_free_criterion_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, "--criterion", "lamp", "--calib-batches", "3",
                 "--out", str(tmp_path / "o")]) == 1
    assert "--calib-batches is only for data-aware criteria" in capsys.readouterr().err


def test_needs_data_knows_element_and_group_criteria() -> None:
    from prunekit.cli.calibration import needs_data
    from prunekit.errors import ConfigError

    assert needs_data("taylor") and needs_data("activation")
    assert not needs_data("l1") and not needs_data("bn_scale") and not needs_data("fpgm")
    with pytest.raises(ConfigError, match="criterion='nope'"):
        needs_data("nope")
