"""MIL models and ASMIL's plug-ins: registry, shapes, overfitting real bags, anchor EMA, sigmax, dropping, masking."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_pipeline.mil import (
    Anchor,
    MILOutput,
    RandomDropping,
    anchor_loss,
    create_model,
    diversity_loss,
    list_models,
    sigmax,
    stochastic_topk_mask,
)
from wsi_pipeline.mil_benchmarks import read_mil_csv


@functools.cache
def _musk_subset(csv_path: Path) -> tuple[list[torch.Tensor], torch.Tensor]:
    ids, y, bags = read_mil_csv(csv_path)
    pick = [i for i in range(len(ids)) if y[i] == 1][:6] + [i for i in range(len(ids)) if y[i] == 0][:6]
    stacked = np.concatenate([bags[ids[i]] for i in pick])
    mean, std = stacked.mean(0), stacked.std(0) + 1e-6
    return [torch.from_numpy((bags[ids[i]] - mean) / std).float() for i in pick], torch.from_numpy(y[pick])


@pytest.fixture
def musk_bags(mil_dir: Path) -> tuple[list[torch.Tensor], torch.Tensor]:
    """12 real Musk1 bags (6 per class), z-scored."""
    return _musk_subset(mil_dir / "musk1.csv")


def test_registry_lists_models_and_rejects_unknown() -> None:
    assert {"abmil", "acmil", "asmil"} <= set(list_models())
    with pytest.raises(ValueError, match="valid names: abmil, acmil, asmil"):
        create_model("transmil2", in_dim=8, n_classes=2)
    model = create_model("asmil", in_dim=32, n_classes=2, hidden_dim=None, n_tokens=None)
    assert model.n_tokens == 16 and model.model_name == "asmil"


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_dim=48, n_classes=3, hidden_dim=32)
    for bag in (torch.randn(23, 48), torch.randn(1, 23, 48)):
        out = model(bag)
        assert isinstance(out, MILOutput)
        assert out.logits.shape == (1, 3)
        assert out.attention_logits.dim() == 3 and out.attention_logits.shape[::2] == (1, 23)
        assert torch.isfinite(out.attention_logits).all()
        assert torch.allclose(out.attention().sum(-1), torch.ones(1))
    with pytest.raises(ValueError, match="bag must be"):
        model(torch.randn(2, 3, 4, 48))


@pytest.mark.parametrize("name", list_models())
def test_each_model_overfits_real_bags(name: str, musk_bags) -> None:
    bags, y = musk_bags
    torch.manual_seed(0)
    model = create_model(name, in_dim=bags[0].shape[1], n_classes=2, hidden_dim=64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(40):
        model.train()
        for bag, label in zip(bags, y, strict=True):
            out = model(bag)
            loss = torch.nn.functional.cross_entropy(out.logits, label.view(1))
            if out.branch_logits is not None:
                loss = loss + torch.nn.functional.cross_entropy(
                    out.branch_logits[0], label.repeat(out.branch_logits.shape[1])
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.stack([model(bag).logits.argmax(-1)[0] for bag in bags])
    assert (pred == y).all(), f"{name} did not fit 12 real bags: {pred.tolist()} vs {y.tolist()}"


@pytest.mark.parametrize("name", list_models())
def test_anchor_moves_by_ema_not_gradients(name: str) -> None:
    torch.manual_seed(0)
    student = create_model(name, in_dim=16, n_classes=2, hidden_dim=16)
    anchor = Anchor(student, mode="ema", momentum=0.9)
    for pa, ps in zip(anchor.model.parameters(), student.parameters(), strict=True):
        assert torch.equal(pa, ps) and not pa.requires_grad
    before = [p.detach().clone() for p in anchor.model.parameters()]
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    bag = torch.randn(12, 16)
    out = student.train()(bag)
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([1])) + anchor.loss(bag, out)
    loss.backward()
    assert all(p.grad is None for p in anchor.model.parameters())
    opt.step()
    after_step = [p.detach().clone() for p in anchor.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after_step, strict=True)), "gradients moved the anchor"
    anchor.update(student)
    for pa, old, ps in zip(anchor.model.parameters(), before, student.parameters(), strict=True):
        assert torch.allclose(pa, 0.9 * old + 0.1 * ps.detach(), atol=1e-6)
    moved = sum(not torch.equal(a, b) for a, b in zip(before, anchor.model.parameters(), strict=True))
    assert moved > 0


def test_frozen_anchor_is_independent_and_never_updated() -> None:
    torch.manual_seed(0)
    student = create_model("asmil", in_dim=16, n_classes=2, hidden_dim=16)
    anchor = Anchor(
        student, mode="frozen", rebuild=lambda: create_model("asmil", in_dim=16, n_classes=2, hidden_dim=16)
    )
    assert not torch.equal(anchor.model.reduce.weight, student.reduce.weight)
    before = [p.clone() for p in anchor.model.parameters()]
    anchor.update(student)
    assert all(torch.equal(a, b) for a, b in zip(before, anchor.model.parameters(), strict=True))
    with pytest.raises(ValueError, match="rebuild"):
        Anchor(student, mode="frozen")


def test_sigmax_is_normalised_and_bounded() -> None:
    x = torch.randn(3, 4, 50) * 3
    s = sigmax(x, tau=0.5)
    assert torch.allclose(s.sum(-1), torch.ones(3, 4), atol=1e-6)
    assert (s > 0).all() and (s < 1).all()
    # One huge logit: softmax puts ~all mass on it; sigmax caps it at 1 / (1 + (N-1) * sigmoid(0)/1).
    peaked = torch.tensor([50.0, 0.0, 0.0, 0.0])
    assert torch.softmax(peaked, -1).max() > 0.999
    assert sigmax(peaked, tau=0.5).max() == pytest.approx(1 / 2.5, abs=1e-6)
    assert sigmax(torch.full((7,), 1e4), tau=0.5).max() == pytest.approx(1 / 7, abs=1e-6)


def test_anchor_loss_reductions_and_gradient_direction() -> None:
    student = torch.randn(1, 8, 30, requires_grad=True)
    target = torch.randn(1, 8, 30, requires_grad=True)
    summed = anchor_loss(student, target, tau=0.5, reduction="sum")
    mean = anchor_loss(student, target, tau=0.5, reduction="mean")
    assert summed.item() == pytest.approx(30 * mean.item(), rel=1e-5)
    summed.backward()
    assert student.grad is not None and target.grad is None
    beta = sigmax(target.detach(), 0.5)
    expected = -(beta * torch.log_softmax(student.detach(), -1)).sum(-1).mean()
    assert summed.item() == pytest.approx(expected.item(), rel=1e-6)


def test_token_dropping_drops_exactly_n_drop_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("asmil", in_dim=16, n_classes=2, hidden_dim=16)
    seen: list[int] = []
    model.bag_attention.register_forward_hook(lambda mod, args, out: seen.append(args[1].shape[1]))
    dropper = RandomDropping("token", 10, torch.Generator().manual_seed(0))
    dropper.check(model)
    bag = torch.randn(20, 16)
    draws = set()
    model.train()
    for _ in range(5):
        kept_bag, keep = dropper(model, bag)
        assert kept_bag is bag and keep is not None
        assert len(keep) == 6 and len(set(keep.tolist())) == 6 and keep.max() < 16
        draws.add(tuple(keep.tolist()))
        model(kept_bag, keep_tokens=keep)
    assert seen == [6] * 5 and len(draws) > 1
    model.eval()
    kept_bag, keep = dropper(model, bag)
    assert keep is None and kept_bag is bag
    model(kept_bag)
    assert seen[-1] == 16
    with pytest.raises(ValueError, match="branch tokens"):
        dropper.check(create_model("abmil", in_dim=16, n_classes=2))


def test_instance_dropping_works_with_any_model() -> None:
    dropper = RandomDropping("instance", 10, torch.Generator().manual_seed(0))
    model = create_model("abmil", in_dim=16, n_classes=2).train()
    bag = torch.randn(30, 16)
    dropped, keep = dropper(model, bag)
    assert dropped.shape == (20, 16) and keep is None
    rows = {tuple(r.tolist()) for r in bag}
    assert all(tuple(r.tolist()) in rows for r in dropped)
    assert dropper(model, torch.randn(5, 16))[0].shape == (1, 16)  # never empties a bag
    assert dropper(model.eval(), bag)[0] is bag


def test_acmil_masks_only_topk_logits() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 50)
    masked = stochastic_topk_mask(logits, top_k=10, ratio=0.6)
    top = logits.topk(10, dim=-1).indices
    for b in range(2):
        for t in range(5):
            hit = torch.isinf(masked[b, t]).nonzero().flatten()
            assert len(hit) == 6
            assert set(hit.tolist()) <= set(top[b, t].tolist())
    finite = ~torch.isinf(masked)
    assert torch.equal(masked[finite], logits[finite])
    assert torch.equal(stochastic_topk_mask(torch.randn(1, 1, 1)).isinf(), torch.zeros(1, 1, 1, dtype=torch.bool))

    model = create_model("acmil", in_dim=16, n_classes=2, hidden_dim=16).train()
    out = model(torch.randn(40, 16))
    assert torch.isfinite(out.attention_logits).all(), "attention logits must be returned unmasked"
    assert "diversity" in out.aux_losses and out.branch_logits.shape == (1, 5, 2)
    assert "diversity" not in model.eval()(torch.randn(40, 16)).aux_losses


def test_diversity_loss_is_cosine_similarity() -> None:
    same = torch.softmax(torch.randn(1, 1, 10), -1).expand(1, 4, 10)
    assert diversity_loss(same).item() == pytest.approx(1.0, abs=1e-6)
    disjoint = torch.eye(4).unsqueeze(0)
    assert diversity_loss(disjoint).item() == pytest.approx(0.0, abs=1e-7)
    assert not math.isnan(diversity_loss(torch.ones(1, 1, 3)).item())
