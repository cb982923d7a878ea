"""The language-model loss: cross-entropy of (x @ weight.T) in chunks, with optional logit soft-capping.

`linear_cross_entropy` is what training calls instead of materialising the [N, vocab] logits: on CPUs, where
the vocabulary dominates a small model's step, this removes several full passes over the logits.
`softcap` is the one squashing function both this loss and the model's logits use (Gemma 2's
cap * tanh(logits / cap)), so the two can never disagree. What it leaves to others: the model itself
(`tinylib.model`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(logits / cap): smooth, monotone, and bounded by +-cap (None leaves the logits alone)."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softcap(x @ weight.T) without holding the [N, vocab] logits all at once.

    Works through the rows in chunks of 256 (a chunk's fp32 logits, 256 x 4096 x 4 bytes = 4 MB, stay in the
    CPU's cache while they are read four times; chunks of 1,024 spill), and the gradients (softmax - onehot,
    times the soft-cap's derivative 1 - tanh^2) are formed right away from the same exp pass that gives the
    loss, so backward is two stored tensors.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, chunk: int, compute_dtype, cap: float | None):
        xc, wc = x.to(compute_dtype), weight.to(compute_dtype)
        valid = targets != -1
        n = valid.sum().clamp(min=1)
        grad_x = torch.empty_like(xc)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for a in range(0, x.shape[0], chunk):
            xs, t, ok = xc[a:a + chunk], targets[a:a + chunk], valid[a:a + chunk]
            logits = (xs @ wc.T).float()
            dcap = None
            if cap is not None:
                logits = softcap(logits, cap)
                dcap = 1 - (logits / cap).square()  # d/dz cap tanh(z / cap)
            t_safe = t.clamp(min=0)
            target_logit = logits.gather(1, t_safe[:, None]).squeeze(1)
            top = logits.amax(-1, keepdim=True)
            # one exp pass serves both the loss (log of the sum) and the gradient (softmax = exp / sum)
            grad = logits.sub_(top).exp_()
            sums = grad.sum(-1, keepdim=True)
            total += ((top.squeeze(1) + sums.squeeze(1).log() - target_logit) * ok).sum()
            scale = (ok / n)[:, None]
            grad.mul_(scale / sums)
            grad[torch.arange(len(t), device=t.device), t_safe] -= scale.squeeze(1)
            if dcap is not None:
                grad.mul_(dcap)
            g = grad.to(compute_dtype)
            grad_x[a:a + chunk] = g @ wc
            grad_w += (g.T @ xs).float()
        ctx.save_for_backward(grad_x, grad_w)
        ctx.dtypes = (x.dtype, weight.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w = ctx.saved_tensors
        return ((grad_x * grad_out).to(ctx.dtypes[0]), (grad_w * grad_out).to(ctx.dtypes[1]),
                None, None, None, None)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int = 256, cap: float | None = None) -> torch.Tensor:
    """cross_entropy(softcap(x @ weight.T, cap), targets, ignore_index=-1), chunked;
    x [N, d], weight [V, d], targets [N]."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(x, weight, targets, chunk, dtype, cap)
    total = x.new_zeros((), dtype=torch.float32)
    for a in range(0, x.shape[0], chunk):
        logits = softcap((x[a:a + chunk].to(dtype) @ weight.to(dtype).T).float(), cap)
        total += F.cross_entropy(logits, targets[a:a + chunk], ignore_index=-1, reduction="sum")
    return total / (targets != -1).sum().clamp(min=1)
