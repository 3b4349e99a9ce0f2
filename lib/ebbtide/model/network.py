"""EbbtideNet: a time-aware sequence model of what a user does next and when (or whether) they come back.

Pipeline for one user window (left-padded, oldest first, the last position is the last real event):

  item embedding + W [event type, hour, log gap]    ->  per-event input vectors (width item_dim)
  cuDNN nn.LSTM / nn.GRU                              ->  outputs O (B, L, H), last state h = O[:, -1]
  time_lstm only: decaying read-out at elapsed e      ->  attention from (h, e) over O, each head's
      scores lowered by rate_h x age_j(e), age_j(e) = e + (t_last - t_j); a learned "sink" slot absorbs
      the weight that fades away, so with a long elapsed time the read-out drifts from the user's
      history towards a population prior
  user state s(e) = LayerNorm(h + read-out + W e)     ->  tied item scores  z(s) . E_item + bias
  h                                                   ->  hazard head (log a, log b) of the return time

The recurrence stays a single cuDNN call and the read-out is one batched attention, so there is no
Python loop over time steps. Imports only torch (plus the config dataclass, when given) so that the
benchmark runs on a GPU machine that has nothing but torch.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebbtide.model import heads
from ebbtide.model.heads import SECONDS_PER_DAY

FEATURES = ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length")
HOURS_PER_WEEK = 168
FIRST_REAL_INDEX = 2  # 0 = pad, 1 = OOV
ENCODERS = ("lstm", "gru", "time_lstm")
# Proposal q_j ~ (count_j + 1)^alpha for the popularity sampler: flatter than the counts, so that the
# tail still gets sampled as negatives (word2vec's 0.75).
POPULARITY_ALPHA = 0.75


class LogTimeBasis(nn.Module):
    """Seconds -> log1p(seconds) / 10 and Gaussian bumps over log1p(seconds) (n_bumps + 1 features).

    The bumps sit at log1p of 0 s .. ~1.3 years, so "a minute", "a day" and "a month" land in
    different features without the network having to learn a sharp nonlinearity of one scalar.
    """

    def __init__(self, n_bumps: int = 8):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, 17.5, n_bumps), persistent=False)
        self.inv_width = max(n_bumps - 1, 1) / 17.5
        self.size = n_bumps + 1

    def forward(self, seconds: Tensor) -> Tensor:
        x = torch.log1p(seconds.float().clamp_min(0.0)).unsqueeze(-1)
        bumps = torch.exp(((x - self.centers) * self.inv_width).square() * -0.5)
        return torch.cat([x * 0.1, bumps], dim=-1)


class DecayReadout(nn.Module):
    """Multi-head attention from the query (last state, elapsed time) over the recurrent outputs.

    score_hj = q_h . o_j / sqrt(H) - rate_h * age_j, with age_j in days at the scoring time, plus a
    sink slot per head with a learned score and value. Because the sink does not age, the share of
    weight on the user's events shrinks as the elapsed time grows: exp(-rate_h * e) is how much of
    head h's interest survives e days of absence. rate_h = ln 2 / (head half-life).

    Keys and values are the recurrent outputs themselves: a key projection would be redundant with
    the query projection, and leaving out per-position projections keeps the read-out to two batched
    matrix products per step, so the model stays at cuDNN speed.
    """

    def __init__(self, hidden: int, time_dim: int, n_heads: int, half_life_min_days: float, half_life_max_days: float):
        super().__init__()
        self.n_heads, self.hidden = n_heads, hidden
        self.q = nn.Linear(hidden + time_dim, n_heads * hidden)
        self.out = nn.Linear(n_heads * hidden, hidden)
        half_lives = torch.logspace(math.log10(half_life_min_days), math.log10(half_life_max_days), n_heads)
        self.log_rate = nn.Parameter(torch.log(math.log(2.0) / half_lives))
        self.sink_score = nn.Parameter(torch.zeros(n_heads))
        self.sink_value = nn.Parameter(torch.zeros(n_heads, hidden))

    def rates(self) -> Tensor:
        """Per-head decay rates, per day (clamped between a 10-year and a 1-minute half-life)."""
        return self.log_rate.clamp(math.log(math.log(2.0) / 3650.0), math.log(math.log(2.0) * 1440.0)).exp()

    def forward(self, outputs: Tensor, last: Tensor, elapsed_emb: Tensor, age_days: Tensor, mask: Tensor):
        b, l, h = outputs.shape
        q = self.q(torch.cat([last, elapsed_emb.to(last.dtype)], dim=-1)).view(b, self.n_heads, h)
        scores = torch.bmm(q, outputs.transpose(1, 2)).float() * (h ** -0.5)  # (B, heads, L)
        scores = (scores - self.rates().view(1, -1, 1) * age_days.unsqueeze(1)).masked_fill(~mask.unsqueeze(1), float("-inf"))
        sink = self.sink_score.view(1, -1, 1).expand(b, -1, 1).float()
        weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)
        w_events, w_sink = weights[..., :l], weights[..., l:]
        read = torch.bmm(w_events.to(outputs.dtype), outputs) + w_sink.to(outputs.dtype) * self.sink_value.to(outputs.dtype)
        return self.out(read.reshape(b, self.n_heads * h)), w_events


class EbbtideNet(nn.Module):
    """See the module docstring. `forward(batch)` is `loss(batch)`, so DDP / Horovod wrappers just work."""

    def __init__(self, mcfg: Any, n_items: int, n_event_types: int):
        super().__init__()
        if mcfg.encoder not in ENCODERS:
            raise ValueError(f"model.encoder must be one of {ENCODERS}, got {mcfg.encoder!r}")
        if n_items <= FIRST_REAL_INDEX:
            raise ValueError(f"n_items={n_items} leaves no real item (0 = pad and 1 = OOV are counted in n_items)")
        self.mcfg = mcfg
        self.n_items, self.n_event_types = int(n_items), int(n_event_types)
        d, h, t, e = mcfg.item_dim, mcfg.hidden_dim, mcfg.time_dim, mcfg.event_type_dim
        self.time_aware = mcfg.encoder == "time_lstm"
        self.sampled = self.n_items > mcfg.full_softmax_max_items

        self.item_emb = nn.Embedding(self.n_items, d, padding_idx=0)
        self.event_emb = nn.Embedding(max(self.n_event_types, FIRST_REAL_INDEX), e, padding_idx=0)
        self.hour_emb = nn.Embedding(HOURS_PER_WEEK + 1, t, padding_idx=0)  # hour + 1; 0 = pad
        self.time_basis = LogTimeBasis()
        # Event type, hour, log gap, session-start and "is a real event" flags (a real first event
        # also has gap 0) are added to the item embedding rather than concatenated: the recurrence
        # then has the input width of a plain item LSTM. No bias, so pad steps stay exactly zero.
        self.side = nn.Linear(e + t + self.time_basis.size + 2, d, bias=False)
        rnn_cls = nn.GRU if mcfg.encoder == "gru" else nn.LSTM
        self.rnn = rnn_cls(d, h, batch_first=True)
        self.drop = nn.Dropout(mcfg.dropout)
        if self.time_aware:
            self.elapsed_feat = nn.Linear(self.time_basis.size, t)
            self.readout = DecayReadout(h, t, mcfg.decay_heads, mcfg.decay_half_life_min_days, mcfg.decay_half_life_max_days)
            self.elapsed_to_state = nn.Linear(t, h)
            self.state_norm = nn.LayerNorm(h)
        self.to_item_space = nn.Linear(h, d)
        # The last item's own embedding, mapped straight into the item space: "what follows X" is
        # the strongest single signal in these logs (a last-item Markov chain is a hard baseline),
        # and a direct path learns it in a few epochs instead of through the recurrence.
        self.last_item_skip = nn.Linear(d, d, bias=False) if mcfg.last_item_skip else None
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        self.hazard = heads.HazardHead(h)
        # Set by the trainer to sessionize.gap_minutes x 60 (see `loss`); 0 fits every gap.
        self.return_min_gap_s = 0.0
        nn.init.normal_(self.item_emb.weight, std=d ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        # log proposal probabilities of the sampled softmax; pad/OOV are never proposed.
        self.register_buffer("item_log_q", self._uniform_log_q())
        self.register_buffer("unscorable", torch.arange(self.n_items) < FIRST_REAL_INDEX, persistent=False)

    # ------------------------------------------------------------------ inputs

    def _uniform_log_q(self) -> Tensor:
        log_q = torch.zeros(self.n_items)
        log_q[FIRST_REAL_INDEX:] = -math.log(self.n_items - FIRST_REAL_INDEX)
        return log_q

    def set_item_counts(self, counts: Tensor) -> None:
        """Training-set frequency of each item index (n_items,), for `sampled_proposal: popularity`."""
        counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
        if counts.numel() != self.n_items:
            raise ValueError(f"item counts have {counts.numel()} entries; the catalogue has n_items={self.n_items}")
        w = (counts.clamp_min(0.0) + 1.0) ** POPULARITY_ALPHA
        w[:FIRST_REAL_INDEX] = 0.0
        q = w / w.sum()
        log_q = torch.zeros_like(q)
        log_q[FIRST_REAL_INDEX:] = q[FIRST_REAL_INDEX:].log()
        self.item_log_q.copy_(log_q.to(self.item_log_q))

    def _sample_negatives(self, device) -> Tensor:
        k = self.mcfg.sampled_negatives
        if self.mcfg.sampled_proposal == "popularity":
            return torch.multinomial(self.item_log_q.exp().masked_fill(self.unscorable, 0.0), k, replacement=True)
        if self.mcfg.sampled_proposal != "uniform":
            raise ValueError(f"model.sampled_proposal must be uniform or popularity, got {self.mcfg.sampled_proposal!r}")
        return torch.randint(FIRST_REAL_INDEX, self.n_items, (k,), device=device)

    def _device(self):
        return self.item_emb.weight.device

    def _get(self, batch: Mapping[str, Any], name: str, dtype) -> Tensor:
        if name not in batch:
            raise KeyError(f"batch lacks column {name!r}; a batch needs {FEATURES} (and targets for training)")
        return torch.as_tensor(batch[name]).to(device=self._device(), dtype=dtype)

    def _elapsed(self, elapsed_s, b: int) -> Tensor:
        if elapsed_s is None:
            return torch.zeros(b, device=self._device())
        e = torch.as_tensor(elapsed_s, dtype=torch.float32, device=self._device())
        return e.expand(b) if e.dim() == 0 else e.reshape(b)

    def _run_encoder(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        items = self._get(batch, "item_idx", torch.long)
        mask = items > 0
        real = mask.float()
        gap = self._get(batch, "gap_s", torch.float32) * real
        sess = self._get(batch, "session_start", torch.float32) * real
        real_ = real.unsqueeze(-1)
        side = torch.cat(
            [
                self.event_emb(self._get(batch, "event_type_idx", torch.long) * mask),
                self.hour_emb((self._get(batch, "hour_of_week", torch.long).clamp(0, HOURS_PER_WEEK - 1) + 1) * mask),
                self.time_basis(gap) * real_,
                sess.unsqueeze(-1),
                real_,
            ],
            dim=-1,
        )
        x = self.item_emb(items) + self.side(side)
        # Left padding: pad steps come first with zero item/event vectors, so the output at the
        # last position is the state after the last real event; packing would cost a re-sort.
        outputs, _ = self.rnn(self.drop(x))
        last = outputs[:, -1]
        # t_last - t_j = sum of the gaps after j.
        cum = torch.cumsum(gap, dim=1)
        since_last_days = (cum[:, -1:] - cum) / SECONDS_PER_DAY
        return {"items": items, "mask": mask, "outputs": outputs, "last": last, "since_last_days": since_last_days}

    def _state_at(self, enc: dict[str, Tensor], elapsed_s: Tensor, return_weights: bool = False):
        last = enc["last"]
        if not self.time_aware:
            return (last, None) if return_weights else last
        e_emb = self.elapsed_feat(self.time_basis(elapsed_s))
        age = enc["since_last_days"] + (elapsed_s / SECONDS_PER_DAY).unsqueeze(1)
        read, weights = self.readout(enc["outputs"], last, e_emb, age, enc["mask"])
        state = self.state_norm(last + self.drop(read) + self.elapsed_to_state(e_emb.to(last.dtype)))
        return (state, weights) if return_weights else state

    def _item_vectors(self, state: Tensor, enc: dict[str, Tensor]) -> Tensor:
        z = self.to_item_space(self.drop(state))
        if self.last_item_skip is not None:
            z = z + self.last_item_skip(self.item_emb(enc["items"][:, -1]))
        return z

    def _full_logits(self, z: Tensor) -> Tensor:
        logits = F.linear(z, self.item_emb.weight, self.item_bias)  # tied: items score by their input embedding
        return logits.masked_fill(self.unscorable, float("-inf"))

    def _hazard_params(self, enc: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.hazard(enc["last"])

    # ------------------------------------------------------------------ public API

    def encode(self, batch: Mapping[str, Any], elapsed_s: Tensor | None = None) -> Tensor:
        """User state (B, hidden_dim) after the last event, as of `elapsed_s` seconds later (default 0)."""
        enc = self._run_encoder(batch)
        return self._state_at(enc, self._elapsed(elapsed_s, enc["last"].shape[0]))

    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Next-item loss (rows with target_item >= 2, scored at the time of the next visit) plus
        hazard_weight x the censored return-time NLL (all rows). Returns (total, parts)."""
        enc = self._run_encoder(batch)
        target = self._get(batch, "target_item", torch.long)
        t_next_s = self._get(batch, "time_to_next_s", torch.float32).clamp_min(0.0)
        censored = self._get(batch, "censored", torch.float32)
        valid = target >= FIRST_REAL_INDEX
        n_valid = valid.sum().clamp_min(1)

        z = self._item_vectors(self._state_at(enc, t_next_s), enc)
        if self.sampled:
            safe_target = torch.where(valid, target, torch.full_like(target, FIRST_REAL_INDEX))
            per_row = heads.sampled_softmax_loss(
                z, self.item_emb.weight, self.item_bias, safe_target, self._sample_negatives(z.device), self.item_log_q,
                reduction="none",
            )
            item_loss = (per_row * valid).sum() / n_valid
        else:
            logits = self._full_logits(z)
            item_loss = F.cross_entropy(
                logits.float(), torch.where(valid, target, torch.full_like(target, -100)), ignore_index=-100, reduction="sum"
            ) / n_valid

        log_a, log_b = self._hazard_params(enc)
        # A return is the start of a new session: an event minutes after the last one continues the
        # same visit and says nothing of how fast interest fades. So the hazard is fitted only to
        # gaps of at least the session gap, conditional on none shorter (left truncation); at
        # scoring time the elapsed time is past the session gap, where this conditioning cancels.
        t_days = t_next_s / SECONDS_PER_DAY
        entry = self.return_min_gap_s / SECONDS_PER_DAY
        at_risk = heads.at_risk_after(t_days, entry)
        return_loss = heads.hazard_nll(log_a, log_b, t_days, censored, entry).sum() / at_risk.sum().clamp_min(1)
        total = item_loss + self.mcfg.hazard_weight * return_loss
        return total, {"next_item": item_loss.detach(), "return_time": return_loss.detach()}

    forward = loss

    def item_scores(self, batch: Mapping[str, Any], elapsed_s: Tensor) -> Tensor:
        """Scores (B, n_items) over the whole catalogue, as of `elapsed_s` seconds after each user's
        last event; pad and OOV are -inf. Only the time_lstm encoder makes them depend on elapsed_s."""
        enc = self._run_encoder(batch)
        state = self._state_at(enc, self._elapsed(elapsed_s, enc["last"].shape[0]))
        return self._full_logits(self._item_vectors(state, enc)).float()

    def return_time(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Return-time figures as of the last event (elapsed 0); see `return_time_at`."""
        return self.return_time_at(batch, None)

    def return_time_at(self, batch: Mapping[str, Any], elapsed_s: Tensor | None) -> dict[str, Tensor]:
        """Return-time figures as of `elapsed_s` seconds after the last event, given no return so far.

        p_return_7d / p_return_30d: P(an event within 7 / 30 days from then); p_return_ever: 1 - cure
        fraction; expected_days_to_return: mean days from then to the return given a return within
        model.return_horizon_days; half_life_days: ln 2 / b, the time for the return hazard to halve.
        """
        enc = self._run_encoder(batch)
        e_days = self._elapsed(elapsed_s, enc["last"].shape[0]) / SECONDS_PER_DAY
        a, b = heads.hazard_rates(*self._hazard_params(enc))
        return {
            "p_return_7d": heads.p_return_within(a, b, 7.0, e_days),
            "p_return_30d": heads.p_return_within(a, b, 30.0, e_days),
            "p_return_ever": heads.p_return_ever(a, b, e_days),
            "expected_days_to_return": heads.expected_days_to_return(a, b, e_days, self.mcfg.return_horizon_days),
            "half_life_days": heads.half_life_days(b),
            "hazard_a": a,
            "hazard_b": b,
        }

    def category_interest(self, batch: Mapping[str, Any], item_category: Tensor, elapsed_s: Tensor | None) -> Tensor:
        """Decayed interest per category (B, n_categories), n_categories = item_category.max() + 1.

        time_lstm: the read-out's attention mass on the user's events of each category at the given
        elapsed time (averaged over heads); it sums to at most 1 and shrinks as interest fades into
        the sink. lstm / gru: each event weighted by exp(-b * age) with the user's hazard rate b,
        averaged over the window.
        """
        enc = self._run_encoder(batch)
        bsz = enc["last"].shape[0]
        elapsed = self._elapsed(elapsed_s, bsz)
        cat_of = torch.as_tensor(item_category, device=self._device()).long()
        cats = cat_of[enc["items"]].clamp_min(0)
        n_cat = int(cat_of.max().item()) + 1
        if self.time_aware:
            _, w = self._state_at(enc, elapsed, return_weights=True)
            weights = w.mean(dim=1)
        else:
            _, b = heads.hazard_rates(*self._hazard_params(enc))
            age = enc["since_last_days"] + (elapsed / SECONDS_PER_DAY).unsqueeze(1)
            weights = torch.exp(-b.unsqueeze(1) * age) / enc["mask"].sum(1, keepdim=True).clamp_min(1)
        weights = weights.float() * enc["mask"] * (enc["items"] >= FIRST_REAL_INDEX)
        out = torch.zeros(bsz, n_cat, device=weights.device)
        return out.scatter_add_(1, cats, weights)

    def decay_half_lives_days(self) -> Tensor | None:
        """The read-out heads' half-lives (time_lstm only): how fast each head forgets an event."""
        return math.log(2.0) / self.readout.rates().detach() if self.time_aware else None
