"""Bags for training: z-scoring with the training bags' statistics must not blow up near-constant features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsi_pipeline.mil_datasets import MIL_ENCODER, DigitBagsConfig, make_digit_bags
from wsi_pipeline.store import list_stores, slide_id_from_store
from wsi_pipeline.training import BagLoader, standardization_scale


def test_scale_is_one_for_tiny_std() -> None:
    std = torch.tensor([0.0, 1e-9, 2e-4, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(standardization_scale(std).numpy(), [1.0, 1.0, 1.0, 0.5, 1.0, 2.0])


def test_feature_constant_in_training_bags_gives_bounded_z_scores(tmp_path: Path) -> None:
    # Real digits: the top-left pixel is blank in every image and a few pixels are lit in a handful of them, so
    # some features are constant in one fold's training bags and not in its test bags.
    stores_dir, _ = make_digit_bags(tmp_path, DigitBagsConfig(n_bags=12, bag_size=(5, 8), seed=0))
    stores = {slide_id_from_store(p): p for p in list_stores(stores_dir)}
    loader = BagLoader(stores, MIL_ENCODER)
    ids = sorted(stores)
    train_ids, other_ids = ids[:3], ids[3:]
    train_bags = torch.cat([loader.get(s) for s in train_ids])
    others = torch.cat([loader.get(s) for s in other_ids])
    constant = (train_bags.std(0) == 0) & (others.std(0) > 0)
    assert constant.any(), "the test needs a feature constant in the training bags only"
    mean, scale = loader.fit_standardization(train_ids)
    loader.set_standardization(mean, scale)
    z = torch.cat([loader.get(s) for s in other_ids])
    # Pixels are in [0, 1]: a feature that was constant in training is only centred, never divided by ~0.
    assert z[:, constant].abs().max() <= 1.0
    assert torch.isfinite(z).all() and z.abs().max() < 100
    np.testing.assert_allclose(scale[constant].numpy(), 1.0)
