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


def test_lesions_are_groups_of_touching_key_tiles_and_hits_count_each_once() -> None:
    from wsi_pipeline.training import LESION_TOP_K, lesion_regions

    # A 6 x 3 grid of 224-px tiles; keys: two touching at (0,0),(1,1) (diagonal: one lesion), one alone at (4,2).
    coords = np.array([(x * 224 + 100, y * 224 + 50) for y in range(3) for x in range(6)])
    labels = np.zeros(18, dtype=np.int16)
    labels[[0, 7, 16]] = 1
    regions = lesion_regions(coords, labels)
    assert regions[0] == regions[7] != regions[16] and regions[0] >= 0 and regions[16] >= 0
    assert (regions[labels == 0] == -1).all()
    # Top-2: tile 7 (lesion A) and a negative tile: one lesion of two hit.
    attention = np.full(18, 0.01)
    attention[[7, 3]] = [0.5, 0.4]
    got = bag_localisation(attention, labels, regions, top_k=2)
    assert got["loc_lesions_hit"] == pytest.approx(0.5) and got["lesions"] == 2
    assert bag_localisation(attention, labels, regions, top_k=3)["loc_lesions_hit"] == pytest.approx(0.5 + 0.5 / 16)
    # Uniform attention: top-k of 18 tied tiles; each lesion is hit with probability 1 - C(18-t, k) / C(18, k).
    uniform = bag_localisation(np.full(18, 1 / 18), labels, regions, top_k=LESION_TOP_K)
    p_one = 1 - math.comb(17, LESION_TOP_K) / math.comb(18, LESION_TOP_K)
    p_two = 1 - math.comb(16, LESION_TOP_K) / math.comb(18, LESION_TOP_K)
    assert uniform["loc_lesions_hit"] == pytest.approx((p_one + p_two) / 2)
    assert "loc_lesions_hit" not in bag_localisation(attention, labels)  # no grid, no lesions
    assert mean_localisation([got, bag_localisation(attention, labels)])["loc_lesions_hit"] == pytest.approx(0.5)


def test_selection_breaks_ties_on_f1_auc_by_the_validation_loss() -> None:
    from wsi_pipeline.training import selection_score

    early = {"f1_macro": 1.0, "auc": 1.0, "accuracy": 1.0, "loss": 0.6}
    late = {"f1_macro": 1.0, "auc": 1.0, "accuracy": 1.0, "loss": 0.01}
    worse = {"f1_macro": 0.95, "auc": 1.0, "accuracy": 0.95, "loss": 0.001}  # one slide of 20 wrong
    for rule in ("f1_auc", "accuracy"):
        assert selection_score(late, rule) > selection_score(early, rule) > selection_score(worse, rule)
