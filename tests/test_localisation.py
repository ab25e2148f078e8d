"""Localisation metrics (attention against instance labels), checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsi_pipeline.training import bag_localisation, mean_localisation


def test_hand_computed_bag() -> None:
    # Key instances 1 and 2. Pairs (key, other): (0.1 vs 0.4) no, (0.1 vs 0.2) no, (0.3 vs 0.4) no, (0.3 vs 0.2) yes.
    attention = np.array([0.4, 0.1, 0.3, 0.2])
    labels = np.array([0, 1, 1, 0])
    got = bag_localisation(attention, labels)
    assert got == pytest.approx({"loc_auc": 0.25, "loc_precision": 0.5, "loc_mass": 0.4, "key_fraction": 0.5})


def test_perfect_uniform_and_ties() -> None:
    labels = np.array([0, 1, 0, 1, 0, 0, 0, 0])
    perfect = bag_localisation(np.array([0.0, 0.5, 0.0, 0.5, 0, 0, 0, 0]), labels)
    assert perfect == pytest.approx({"loc_auc": 1.0, "loc_precision": 1.0, "loc_mass": 1.0, "key_fraction": 0.25})
    # Uniform attention: every pair tied (AUC 0.5), the mass is the key fraction.
    uniform = bag_localisation(np.full(8, 1 / 8), labels)
    assert uniform["loc_auc"] == 0.5 and uniform["loc_mass"] == pytest.approx(0.25)
    assert uniform["loc_precision"] == pytest.approx(0.25)  # ties share the top-k places: the key fraction
    # One key tied with one other instance at the top: half a pair.
    tied = bag_localisation(np.array([0.3, 0.3, 0.1, 0.2]), np.array([0, 1, 0, 0]))
    assert tied["loc_auc"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert tied["loc_precision"] == pytest.approx(0.5)  # top-1 is a tie of one key and one other instance
    # k = 2 keys; one instance above the tie, then two tied (one key) for the last place: (1 + 1 * 1/2) / 2.
    two = bag_localisation(np.array([0.5, 0.2, 0.2, 0.1]), np.array([1, 1, 0, 0]))
    assert two["loc_precision"] == pytest.approx(0.75)


def test_unknown_instances_are_left_out_and_unscorable_bags_are_none() -> None:
    # The unknown instance (-1) has the most attention; without it the bag is perfectly localised.
    got = bag_localisation(np.array([0.5, 0.3, 0.1, 0.1]), np.array([-1, 1, 0, 0]))
    assert got["loc_auc"] == 1.0 and got["loc_precision"] == 1.0
    assert got["loc_mass"] == pytest.approx(0.6) and got["key_fraction"] == pytest.approx(1 / 3)
    assert bag_localisation(np.ones(4), np.zeros(4)) is None  # nothing to find
    assert bag_localisation(np.ones(4), np.array([2, 1, 1, 1])) is None  # every instance is a key (any class >= 1)
    with pytest.raises(ValueError, match="3 attention values for 4"):
        bag_localisation(np.ones(3), np.zeros(4))


def test_mean_over_scorable_bags() -> None:
    rows = [{"loc_auc": 1.0, "loc_precision": 0.5, "loc_mass": 0.2}, None, {"loc_auc": 0.5, "loc_precision": 0.0,
            "loc_mass": 0.1}]  # fmt: skip
    got = mean_localisation(rows)
    assert got == pytest.approx({"loc_auc": 0.75, "loc_precision": 0.25, "loc_mass": 0.15, "loc_bags": 2})
    assert mean_localisation([None, None]) == {}
    assert not math.isnan(got["loc_mass"])
