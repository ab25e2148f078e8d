"""ASMIL: the folded attention is exactly the textbook computation, and the anchor's logits-only pass equals its
full forward."""

from __future__ import annotations

import math

import pytest
import torch

from wsi_pipeline.mil import Anchor, anchor_loss, create_model
from wsi_pipeline.mil.asmil import BranchAttention


def _textbook(att: BranchAttention, queries: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention as written: every instance projected to a key and a value."""
    b, n, d = x.shape
    heads, dh = att.n_heads, att.head_dim
    q = att.q_proj(queries).view(-1, heads, dh).transpose(0, 1)  # (H, Q, dh)
    k = att.k_proj(x).view(b, n, heads, dh).transpose(1, 2)  # (B, H, N, dh)
    v = att.v_proj(x).view(b, n, heads, dh).transpose(1, 2)  # (B, H, N, dh)
    logits = q.unsqueeze(0) @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, H, Q, N)
    pooled = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, -1, d)  # (B, Q, d)
    return att.o_proj(pooled), logits.transpose(1, 2).reshape(b, -1, n)  # (B, Q*H, N), query-major


@pytest.mark.parametrize("bias", [True, False])
def test_folded_attention_equals_the_textbook_formula(bias: bool) -> None:
    torch.manual_seed(0)
    att = BranchAttention(48, n_heads=6, bias=bias).double()
    queries = torch.randn(5, 48, dtype=torch.double, requires_grad=True)
    x = torch.randn(2, 70, 48, dtype=torch.double, requires_grad=True)
    out, logits = att(queries, x)
    ref_out, ref_logits = _textbook(att, queries, x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-12)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum() + logits.sum(), [queries, x, *att.parameters()])
    ref_grads = torch.autograd.grad((ref_out * weights).sum() + ref_logits.sum(), [queries, x, *att.parameters()])
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_attention_logits_only_pass_equals_the_forward() -> None:
    torch.manual_seed(0)
    model = create_model("asmil", in_dim=40, n_classes=3, hidden_dim=32).eval()
    bag = torch.randn(90, 40)
    torch.testing.assert_close(model.attention_logits(bag), model(bag).attention_logits, rtol=0, atol=0)
    # The anchor's loss uses the logits-only pass; it must equal the loss from the anchor's full forward.
    student = create_model("asmil", in_dim=40, n_classes=3, hidden_dim=32).train()
    anchor = Anchor(student, momentum=0.5)
    with torch.no_grad():  # move the student away from the anchor so that the check means something
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    out = student(bag)
    with torch.no_grad():
        target = anchor.model(bag).attention_logits
    expected = anchor.weight * anchor_loss(out.attention_logits, target, tau=anchor.tau, reduction=anchor.reduction)
    torch.testing.assert_close(anchor.loss(bag, out), expected)
