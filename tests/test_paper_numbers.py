"""The seed papers' published numbers (msutils/studies/paper_*.yaml) and their one loader."""

from __future__ import annotations

import re

import pytest

from msutils.segmentation.metrics import classification_metrics
from msutils.studies import paper_numbers


def test_load_gives_a_fresh_copy_and_names_the_choices() -> None:
    assert {"001", "003"} <= set(paper_numbers.available())
    a = paper_numbers.load("003")
    a["table4"]["fold 1"] = 0.0
    assert paper_numbers.load("003")["table4"]["fold 1"] == 83.5
    for bad in ("1", "999", 3, "../x"):
        with pytest.raises(ValueError, match=r"'seed' must be one of \['001', '003'"):
            paper_numbers.load(bad)


def test_seed001_table3_r2_is_r_squared() -> None:
    """The paper's "R2" is the squared Pearson r in every cell (to its 3 printed decimals)."""
    t3 = paper_numbers.load("001")["table3"]
    cells = [v for per in t3.values() for v in per.values()]
    assert len(cells) == 12
    assert all(abs(v["pearson_r2"] - v["r"] ** 2) <= 1.5e-3 for v in cells)
    d = paper_numbers.load("001")["design"]
    assert d["n_train"] + d["n_internal_test"] == d["n_site1"]


def _pct(cell: str) -> float:
    return float(re.match(r"\s*([\d.]+)", cell).group(1))


def test_seed003_counts_reproduce_the_printed_table5_with_swapped_labels() -> None:
    p = paper_numbers.load("003")
    for row, counts in p["slice_counts"].items():
        m = classification_metrics(**counts)
        printed = p["table5_printed"][row]
        assert round(100 * m["accuracy"], 1) == pytest.approx(_pct(printed["accuracy"]), abs=0.06)
        # printed "sensitivity" = specificity, "PPV" = NPV, "NPV" = PPV
        assert 100 * m["specificity"] == pytest.approx(_pct(printed["sensitivity"]), abs=0.06)
        assert 100 * m["npv"] == pytest.approx(_pct(printed["PPV"]), abs=0.06)
        assert 100 * m["ppv"] == pytest.approx(_pct(printed["NPV"]), abs=0.06)
        assert 100 * p["voxel"][row]["dice"] == pytest.approx(_pct(printed["DSC"]), abs=0.06)
        assert p["voxel"][row]["hd95"] == pytest.approx(_pct(printed["HD95"]))
