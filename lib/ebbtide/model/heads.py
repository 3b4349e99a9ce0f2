"""The two heads of EbbtideNet and the math behind them, as pure torch functions.

Return time: a decaying hazard ``lambda(t) = a * exp(-b t)`` (t in days, a, b > 0 per user), i.e. a
Gompertz law with negative shape. Its cumulative hazard ``Lambda(t) = a/b * (1 - exp(-b t))`` stays
below ``a/b``, so ``P(never return) = exp(-a/b)``: a cure fraction for users whose interest fades for
good. ``b`` is the rate at which the urge to come back fades: the hazard halves every
``ln 2 / b`` days, the user's interest half-life.

Next item: full softmax over the catalogue (tied item embeddings), or sampled softmax with a log-Q
correction when the catalogue is too large to score whole at every step.

Only torch is imported here so that the GPU benchmark runs on a machine without the rest of the stack.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SECONDS_PER_DAY = 86400.0
LN2 = math.log(2.0)

# log a in [-20, 10]: a hazard from ~1e-9 to ~2e4 returns per day. b between a 10-year and a
# 15-minute half-life; outside that range the likelihood is flat and only risks overflow.
LOG_A_MIN, LOG_A_MAX = -20.0, 10.0
LOG_B_MIN, LOG_B_MAX = math.log(LN2 / 3650.0), math.log(LN2 / (15.0 / 1440.0))


def _phi(x: Tensor) -> Tensor:
    """(1 - exp(-x)) / x, stable at x -> 0 (where it tends to 1)."""
    x = x.clamp_min(1e-12)
    return -torch.expm1(-x) / x


def cumulative_hazard(a: Tensor, b: Tensor, t_days: Tensor) -> Tensor:
    """Lambda(t) = a/b (1 - exp(-b t)), written as a t phi(b t) so that small b t loses no precision."""
    t = t_days.clamp_min(0.0)
    return a * t * _phi(b * t)


def hazard_nll(log_a: Tensor, log_b: Tensor, t_days: Tensor, censored: Tensor, entry_days: float | Tensor = 0.0) -> Tensor:
    """Per-example negative log-likelihood of a return time under the decaying hazard.

    Observed return at t: -(log lambda(t) - Lambda(t)); censored at t (no return seen by t): Lambda(t).
    ``entry_days`` > 0 left-truncates at that time: the likelihood is conditional on no return before
    it, i.e. Lambda(entry) is subtracted. Rows with t < entry carry no information on the return and
    get 0 (leave them out of the mean with `at_risk_after`). All inputs broadcast; returns float32.
    """
    log_a = log_a.float().clamp(LOG_A_MIN, LOG_A_MAX)
    log_b = log_b.float().clamp(LOG_B_MIN, LOG_B_MAX)
    a, b = log_a.exp(), log_b.exp()
    t = t_days.float().clamp_min(0.0)
    g = torch.as_tensor(entry_days, dtype=t.dtype, device=t.device).clamp_min(0.0)
    observed = 1.0 - censored.float()
    log_hazard = log_a - b * t
    nll = cumulative_hazard(a, b, t) - cumulative_hazard(a, b, g) - observed * log_hazard
    return torch.where(at_risk_after(t_days, g), nll, torch.zeros_like(nll))


def at_risk_after(t_days: Tensor, entry_days: float | Tensor) -> Tensor:
    """Rows whose return time (or censoring time) is at or after the truncation time."""
    return t_days.float() >= torch.as_tensor(entry_days, dtype=torch.float32, device=t_days.device)


def p_return_within(a: Tensor, b: Tensor, days: float | Tensor, elapsed_days: Tensor | float = 0.0) -> Tensor:
    """P(return within `days` after the as-of time | no return in the `elapsed_days` before it).

    Lambda(e + d) - Lambda(e) = exp(-b e) Lambda(d): conditioning on survival to e scales a by exp(-b e).
    """
    a_e = a * torch.exp(-b * torch.as_tensor(elapsed_days, dtype=a.dtype, device=a.device).clamp_min(0.0))
    d = torch.as_tensor(days, dtype=a.dtype, device=a.device)
    return -torch.expm1(-cumulative_hazard(a_e, b, d))


def p_return_ever(a: Tensor, b: Tensor, elapsed_days: Tensor | float = 0.0) -> Tensor:
    """1 - cure fraction: P(any return at all | no return in the first `elapsed_days`)."""
    a_e = a * torch.exp(-b * torch.as_tensor(elapsed_days, dtype=a.dtype, device=a.device).clamp_min(0.0))
    return -torch.expm1(-a_e / b)


def half_life_days(b: Tensor) -> Tensor:
    return LN2 / b


def _horizon_grid(horizon_days: float, n: int, device, dtype) -> Tensor:
    # Geometric from one minute: a frequent user's survival curve drops within hours, a lapsing
    # user's over months; a geometric grid resolves both with a few hundred points.
    g = torch.logspace(math.log10(1.0 / 1440.0), math.log10(horizon_days), n - 1, device=device, dtype=dtype)
    return torch.cat([torch.zeros(1, device=device, dtype=dtype), g])


def expected_days_to_return(
    a: Tensor, b: Tensor, elapsed_days: Tensor | float = 0.0, horizon_days: float = 365.0, n_grid: int = 400
) -> Tensor:
    """Mean days from the as-of time to the return, given that the user returns within `horizon_days`.

    E[T - e | e < T <= e + H] = integral_0^H (S_e(u) - S_e(H)) du / (1 - S_e(H)), with S_e the survival
    after e. Finite for every user, unlike the unconditional mean, which is infinite under a cure
    fraction. Read it together with p_return_*: it says *when*, they say *whether*.
    """
    a = a.double()
    b = b.double()
    a_e = a * torch.exp(-b * torch.as_tensor(elapsed_days, dtype=a.dtype, device=a.device).clamp_min(0.0))
    u = _horizon_grid(horizon_days, n_grid, a.device, a.dtype)  # (G,)
    a_e, b_ = a_e.unsqueeze(-1), b.unsqueeze(-1)
    cum = cumulative_hazard(a_e, b_, u)  # (B, G)
    cum_h = cum[..., -1:]
    # S(u) - S(H) and 1 - S(H) through expm1, so that rare returners keep their precision.
    excess = torch.exp(-cum) * -torch.expm1(-(cum_h - cum))
    p = -torch.expm1(-cum_h.squeeze(-1))
    mean = torch.trapezoid(excess, u, dim=-1) / p.clamp_min(1e-300)
    # As a -> 0 (almost no chance of return, or exp(-b e) underflows) the ratio tends to the
    # shape-only limit integral (g(H) - g(u)) du / g(H), g(u) = 1 - exp(-b u).
    g = -torch.expm1(-b_ * u)
    limit = torch.trapezoid(g[..., -1:] - g, u, dim=-1) / g[..., -1].clamp_min(1e-300)
    mean = torch.where(p > 1e-12, mean, limit)
    return mean.clamp(0.0, horizon_days).float()


class HazardHead(nn.Module):
    """User state -> (log a, log b) of the decaying hazard, both in per-day units."""

    def __init__(self, in_dim: int, hidden: int = 64, init_half_life_days: float = 7.0, init_rate_per_day: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 2))
        with torch.no_grad():
            # Start at a plausible population law instead of a = b = 1.
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.copy_(torch.tensor([math.log(init_rate_per_day), math.log(LN2 / init_half_life_days)]))

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """Unclamped (log a, log b); `hazard_nll` and `hazard_rates` clamp them to the valid range."""
        out = self.net(state).float()
        return out[..., 0], out[..., 1]


def hazard_rates(log_a: Tensor, log_b: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) within the range the likelihood was fitted in."""
    return log_a.clamp(LOG_A_MIN, LOG_A_MAX).exp(), log_b.clamp(LOG_B_MIN, LOG_B_MAX).exp()


# ----------------------------------------------------------------------------- next item


def sampled_softmax_loss(
    z: Tensor, item_w: Tensor, item_b: Tensor, target: Tensor, negatives: Tensor, log_q: Tensor, reduction: str = "mean"
) -> Tensor:
    """Sampled softmax with log-Q correction (Jean et al. 2015; Yi et al. 2019).

    Every logit, the target's included, is corrected by the log of its expected count in the sample,
    log(K q_j), so that the sampled partition function estimates the full one and frequently proposed
    items are not over-penalised. Sampled negatives that equal the row's target ("accidental hits")
    are masked out. z: (B, D) user vectors; negatives: (K,) item indices shared by the batch;
    log_q: (n_items,) log proposal probabilities.
    """
    k = negatives.numel()
    log_k = math.log(k)
    pos = (z * item_w[target]).sum(-1) + item_b[target] - (log_q[target] + log_k)
    neg = z @ item_w[negatives].t() + item_b[negatives] - (log_q[negatives] + log_k)
    neg = neg.float().masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos.float().unsqueeze(1), neg], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(target), reduction=reduction)
