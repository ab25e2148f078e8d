"""MIL models and ASMIL's plug-ins: the same tests for every registered model (shapes, attention, plug-ins, overfitting
real bags, the training loop), anchor EMA, sigmax, dropping, and each model's own mechanism."""

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
    smooth_top1_svm_loss,
    stochastic_topk_mask,
)
from wsi_pipeline.mil_datasets import convert_mil_csv, read_mil_csv
from wsi_pipeline.training import TrainConfig, load_checkpoint, model_from_checkpoint, train


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
    assert {"abmil", "acmil", "asmil", "clam_sb", "dsmil", "meanpool", "transmil"} <= set(list_models())
    with pytest.raises(ValueError, match="valid names: abmil, acmil, asmil, clam_sb, dsmil, meanpool, transmil"):
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


def _training_loss(model: torch.nn.Module, bag: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The training loop's loss: CE of the slide logits + CE of the branch logits + the model's aux losses."""
    out = model(bag, label=label) if getattr(model, "takes_label", False) else model(bag)
    loss = torch.nn.functional.cross_entropy(out.logits, label.view(1))
    if out.branch_logits is not None:
        loss = loss + torch.nn.functional.cross_entropy(out.branch_logits[0], label.repeat(out.branch_logits.shape[1]))
    return loss + sum(out.aux_losses.values())


@pytest.mark.parametrize("name", list_models())
def test_each_model_overfits_real_bags(name: str, musk_bags) -> None:
    bags, y = musk_bags
    torch.manual_seed(0)
    model = create_model(name, in_dim=bags[0].shape[1], n_classes=2, hidden_dim=64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(40):
        model.train()
        for bag, label in zip(bags, y, strict=True):
            loss = _training_loss(model, bag, label)
            opt.zero_grad()
            loss.backward()
            opt.step()
        pred = _predict(model, bags)
        if (pred == y).all():
            break
    assert (pred == y).all(), f"{name} did not fit 12 real bags in 40 epochs: {pred.tolist()} vs {y.tolist()}"


def _predict(model: torch.nn.Module, bags: list[torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.stack([model(bag).logits.argmax(-1)[0] for bag in bags])


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


# ----------------------------------------------------------------------------------------- every model, plug-ins
@pytest.mark.parametrize("name", list_models())
def test_attention_column_n_reads_instance_n(name: str) -> None:
    """Column n of the attention logits belongs to instance n: it moves when instance n moves, in every row."""
    torch.manual_seed(0)
    model = create_model(name, in_dim=16, n_classes=2, hidden_dim=16).eval()
    bag = torch.randn(9, 16)
    for n in (0, 4, 8):
        moved = bag.clone()
        moved[n] += 3.0 * torch.randn(16)
        with torch.no_grad():
            before, after = model(bag).attention_logits, model(moved).attention_logits  # (1, K, N)
        if getattr(model, "uniform_attention", False):  # mean pooling: no attention to follow, and it says so
            assert torch.equal(before, after) and (before == before[..., :1]).all()
            continue
        assert (before[0, :, n] != after[0, :, n]).all(), f"{name}: column {n} ignores instance {n}"


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_with_anchor_and_instance_dropping(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_dim=16, n_classes=2, hidden_dim=16)
    anchor = Anchor(model, mode="ema", momentum=0.5)
    frozen = Anchor(model, mode="frozen", rebuild=lambda: create_model(name, in_dim=16, n_classes=2, hidden_dim=16))
    dropper = RandomDropping("instance", 5, torch.Generator().manual_seed(0))
    dropper.check(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = [p.detach().clone() for p in anchor.model.parameters()]
    model.train()
    for step in range(3):
        bag, keep = dropper(model, torch.randn(20, 16))
        assert bag.shape == (15, 16) and keep is None
        out = model(bag)
        assert out.attention_logits.shape[-1] == 15
        loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([step % 2]))
        loss = loss + anchor.loss(bag, out) + frozen.loss(bag, out)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        anchor.update(model)
    assert any(not torch.equal(a, b) for a, b in zip(start, anchor.model.parameters(), strict=True))


@pytest.mark.parametrize("name", list_models())
def test_token_dropping_needs_branch_tokens(name: str) -> None:
    model = create_model(name, in_dim=16, n_classes=2, hidden_dim=16).train()
    dropper = RandomDropping("token", 2, torch.Generator().manual_seed(0))
    if getattr(model, "n_tokens", 0) > 2:
        dropper.check(model)
        bag, keep = dropper(model, torch.randn(10, 16))
        assert model(bag, keep_tokens=keep).logits.shape == (1, 2)
    else:
        with pytest.raises(ValueError, match="branch tokens"):
            dropper.check(model)
        with pytest.raises(ValueError, match="no branch tokens"):
            model(torch.randn(10, 16), keep_tokens=torch.tensor([0]))


@pytest.fixture(scope="module")
def musk_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Stores of 10 + 10 real Musk1 bags, as `wsi-pipeline convert-mil` writes them."""
    from tests.conftest import MIL_DATA

    if not (MIL_DATA / "musk1.csv").is_file():
        pytest.skip(f"real data not available: {MIL_DATA / 'musk1.csv'}")
    rows = (MIL_DATA / "musk1.csv").read_text().splitlines()
    keep: dict[str, list[str]] = {"0": [], "1": []}
    for row in rows:
        label, bag = row.split(",", 2)[:2]
        if bag not in keep[label] and len(keep[label]) < 10:
            keep[label].append(bag)
    out = tmp_path_factory.mktemp("musk")
    subset = out / "musk_small.csv"
    subset.write_text("\n".join(r for r in rows if r.split(",", 2)[1] in keep["0"] + keep["1"]) + "\n")
    return convert_mil_csv(subset, out / "converted")


@pytest.mark.parametrize("name", list_models())
def test_the_training_loop_trains_every_model_with_the_plugins(name: str, musk_stores, tmp_path: Path) -> None:
    stores, labels = musk_stores
    cfg = TrainConfig(
        model=name,
        model_kwargs={"hidden_dim": 32},
        folds=2,
        epochs=2,
        val_fraction=0.2,
        standardize=True,
        lr=5e-4,
        anchor="ema",
        drop="instance",
        n_drop=2,
        plots=False,
    )
    result = train(stores, labels, tmp_path, cfg)
    for fold in result.folds:
        assert all(math.isfinite(row["train_loss"]) for row in fold.history)
        assert {"accuracy", "auc"} <= set(fold.test)
    ckpt = load_checkpoint(result.folds[0].out_dir / "checkpoint_best.pt")
    assert ckpt["model_name"] == name
    assert ckpt["config"]["resolved"] == {"anchor": "ema", "drop": "instance", "threads": 1}
    model = model_from_checkpoint(ckpt)
    assert model(torch.randn(7, 166)).attention_logits.shape[-1] == 7


# ----------------------------------------------------------------------------------------- CLAM-SB
def test_smooth_top1_svm_is_a_smoothed_hinge() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-4.0, 4.0]])
    target = torch.tensor([0, 1, 1])
    margin = 1.0 - torch.nn.functional.one_hot(target, 2)
    expected = (torch.logsumexp(logits + margin, 1) - logits.gather(1, target[:, None]).squeeze(1)).mean()
    assert smooth_top1_svm_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # It exceeds the margin-free cross-entropy: the true class must win by a margin.
    assert smooth_top1_svm_loss(logits, target) > torch.nn.functional.cross_entropy(logits, target)


def test_clam_instance_loss_trains_the_true_class_classifier_on_top_and_bottom_instances() -> None:
    torch.manual_seed(0)
    model = create_model("clam_sb", in_dim=16, n_classes=3, hidden_dim=16, dropout=0.0, k_sample=3).train()
    bag = torch.randn(10, 16)
    out = model(bag, label=torch.tensor([2]))
    assert set(out.aux_losses) == {"instance"} and out.aux_losses["instance"] > 0
    out.aux_losses["instance"].backward()
    grads = [c.weight.grad for c in model.instance_classifiers]
    assert grads[0] is None and grads[1] is None and grads[2].abs().sum() > 0  # only class 2's classifier
    # The pseudo-labels: the 3 most attended instances are positive, the 3 least attended negative.
    attn = out.attention_logits[0, 0].detach()
    h = model.fc(bag.unsqueeze(0))[0].detach()
    top, bottom = attn.topk(3).indices, (-attn).topk(3).indices
    logits = model.instance_classifiers[2](torch.cat([h[top], h[bottom]]))
    expected = smooth_top1_svm_loss(logits, torch.tensor([1, 1, 1, 0, 0, 0]))
    assert out.aux_losses["instance"].item() == pytest.approx(model.instance_weight * expected.item(), rel=1e-5)
    # Subtyping also trains the other classes' classifiers; eval and label-less calls add nothing.
    sub = create_model("clam_sb", in_dim=16, n_classes=3, hidden_dim=16, subtyping=True).train()
    sub(bag, label=torch.tensor([0])).aux_losses["instance"].backward()
    assert all(c.weight.grad.abs().sum() > 0 for c in sub.instance_classifiers)
    assert model.eval()(bag, label=torch.tensor([1])).aux_losses == {}
    assert model.train()(bag).aux_losses == {}
    # k is capped at half the bag (disjoint positives and negatives); one instance gives no instance loss.
    assert model(bag[:1], label=torch.tensor([0])).aux_losses["instance"].item() == 0.0
    assert torch.isfinite(model(bag[:4], label=torch.tensor([0])).aux_losses["instance"])


# ----------------------------------------------------------------------------------------- DSMIL
def test_dsmil_attends_from_the_critical_instance() -> None:
    torch.manual_seed(0)
    model = create_model("dsmil", in_dim=16, n_classes=2, hidden_dim=16).eval()
    bag = torch.randn(12, 16)
    with torch.no_grad():
        out = model(bag)
        h = model.fc(bag)
        inst = model.instance_classifier(h)  # (N, C)
        q = model.query(h)  # (N, 128)
    assert torch.allclose(out.branch_logits[0, 0], inst.max(0).values)  # max-pooled instance stream
    for c in range(2):
        critical = inst[:, c].argmax()
        expected = q @ q[critical] / math.sqrt(128)
        assert torch.allclose(out.attention_logits[0, c], expected, atol=1e-5)


# ----------------------------------------------------------------------------------------- TransMIL
def test_nystrom_attention_is_exact_up_to_the_landmark_count_and_close_beyond() -> None:
    from wsi_pipeline.mil.transmil import NystromAttention, iterative_pinv

    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 4, 8, 8), -1) + torch.eye(8)  # well conditioned
    z = iterative_pinv(a, 12)
    assert torch.allclose(z, torch.linalg.inv(a), atol=1e-4)
    attention = NystromAttention(32, 4, n_landmarks=64, residual_kernel=0, dropout=0.0).eval()
    x = torch.randn(1, 40, 32)
    out, first = attention(x)
    qkv = attention.qkv(x).view(1, 40, 3, 4, 8).permute(2, 0, 3, 1, 4)
    exact = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(8), -1) @ qkv[2]  # (1, 4, 40, 8)
    assert torch.allclose(out, attention.out(exact.transpose(1, 2).reshape(1, 40, 32)), atol=1e-5)
    assert torch.allclose(first, (qkv[0][:, :, 0:1] @ qkv[1].transpose(-1, -2)).squeeze(2) / math.sqrt(8))
    # Beyond the landmark count the approximation is used; on smooth (low-rank) attention it stays close.
    attention.n_landmarks = 16
    smooth = torch.randn(1, 1, 32).expand(1, 200, 32) + 0.05 * torch.randn(1, 200, 32)
    approx, _ = attention(smooth)
    attention.n_landmarks = 10_000
    reference, _ = attention(smooth)
    assert ((approx - reference).norm() / reference.norm()) < 0.05


def test_transmil_attention_covers_the_instances_not_the_padding() -> None:
    torch.manual_seed(0)
    model = create_model("transmil", in_dim=16, n_classes=2, hidden_dim=16).eval()
    for n in (1, 2, 10, 17):  # 17 instances fill a 5 x 5 square with 8 repeats
        out = model(torch.randn(n, 16))
        assert out.attention_logits.shape == (1, 8, n)
