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
# The encoder registry: name -> (recurrence or attention, time-aware read-out). The time-aware ones
# add the decaying read-out at the scoring time; `attention` also decays inside its own scores.
ENCODERS = {
    "lstm": ("lstm", False),
    "gru": ("gru", False),
    "time_lstm": ("lstm", True),
    "time_gru": ("gru", True),
    "attention": ("attention", True),
}
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
    """Multi-head attention from a query (the state at a position, the elapsed time) over the
    recurrent outputs up to that position.

    score_hj = q_h . o_j / sqrt(H) - rate_h * age_j, with age_j in days at the query's time, plus a
    sink slot per head with a learned score and value. Because the sink does not age, the share of
    weight on the user's events shrinks as the elapsed time grows: exp(-rate_h * e) is how much of
    head h's interest survives e days of absence. rate_h = ln 2 / (head half-life).

    With ``per_user`` the rates are the user's own: log rate_h = global log rate_h + 2 tanh(w_h . q),
    a linear map of the query state initialised at zero, so training starts from the global rates
    and learns how much faster or slower (up to e^2 times) each user forgets.

    Keys and values are the recurrent outputs themselves: a key projection would be redundant with
    the query projection, and leaving out per-position projections keeps the read-out to two batched
    matrix products per query, so the model stays at cuDNN speed.
    """

    def __init__(self, hidden: int, time_dim: int, n_heads: int, half_life_min_days: float, half_life_max_days: float,
                 per_user: bool = False):
        super().__init__()
        self.n_heads, self.hidden = n_heads, hidden
        self.q = nn.Linear(hidden + time_dim, n_heads * hidden)
        self.out = nn.Linear(n_heads * hidden, hidden)
        half_lives = torch.logspace(math.log10(half_life_min_days), math.log10(half_life_max_days), n_heads)
        self.log_rate = nn.Parameter(torch.log(math.log(2.0) / half_lives))
        self.sink_score = nn.Parameter(torch.zeros(n_heads))
        self.sink_value = nn.Parameter(torch.zeros(n_heads, hidden))
        self.user_rate = nn.Linear(hidden, n_heads) if per_user else None
        if self.user_rate is not None:
            nn.init.zeros_(self.user_rate.weight)
            nn.init.zeros_(self.user_rate.bias)

    def rates(self, state: Tensor | None = None) -> Tensor:
        """Decay rates per day (clamped between a 10-year and a 1-minute half-life): the global ones
        (n_heads,), or the users' own (..., n_heads) for query states (..., hidden) when per-user."""
        log_rate = self.log_rate
        if state is not None and self.user_rate is not None:
            log_rate = log_rate + 2.0 * torch.tanh(self.user_rate(state).float())
        return log_rate.clamp(math.log(math.log(2.0) / 3650.0), math.log(math.log(2.0) * 1440.0)).exp()

    def forward(self, outputs: Tensor, query: Tensor, elapsed_emb: Tensor, age_days: Tensor, mask: Tensor):
        """outputs (B, L, H); query (B, Q, H) and elapsed_emb (B, Q, T) for Q query positions;
        age_days (B, Q, L) and mask (B, Q, L): each query's age of each event and which it may see.
        Returns the read-out (B, Q, H) and the event weights (B, heads, Q, L)."""
        b, l, h = outputs.shape
        nq = query.shape[1]
        q = self.q(torch.cat([query, elapsed_emb.to(query.dtype)], dim=-1)).view(b, nq * self.n_heads, h)
        scores = torch.bmm(q, outputs.transpose(1, 2)).float().view(b, nq, self.n_heads, l) * (h ** -0.5)
        rate = self.rates(query).view(b, nq, self.n_heads, 1) if self.user_rate is not None else self.rates().view(1, 1, -1, 1)
        scores = (scores - rate * age_days.unsqueeze(2)).masked_fill(~mask.unsqueeze(2), float("-inf"))
        sink = self.sink_score.view(1, 1, -1, 1).expand(b, nq, -1, 1).float()
        weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)  # (B, Q, heads, L + 1)
        w_events, w_sink = weights[..., :l], weights[..., l:]
        read = torch.bmm(w_events.reshape(b, nq * self.n_heads, l).to(outputs.dtype), outputs).view(b, nq, self.n_heads, h)
        read = read + w_sink.to(outputs.dtype) * self.sink_value.to(outputs.dtype)
        return self.out(read.reshape(b, nq, self.n_heads * h)), w_events.permute(0, 2, 1, 3)


class DecayAttentionBlock(nn.Module):
    """One pre-norm causal self-attention block whose scores are lowered by rate_h x the time
    between the two events (in days), per head, as TiSASRec adds time to SASRec: attention to an
    older event fades with the time that passed, at a learned rate per head that starts slow."""

    def __init__(self, width: int, n_heads: int, dropout: float, init_half_life_days: float = 60.0):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * width, width))
        self.drop = nn.Dropout(dropout)
        self.log_rate = nn.Parameter(torch.full((n_heads,), math.log(math.log(2.0) / init_half_life_days)))

    def forward(self, x: Tensor, allowed: Tensor, dt_days: Tensor) -> Tensor:
        """x (B, L, W); allowed (B, L, L) which keys each query sees; dt_days (B, L, L) query time
        minus key time."""
        b, l, _ = x.shape
        rate = self.log_rate.clamp(max=math.log(math.log(2.0) * 1440.0)).exp().view(1, -1, 1, 1)
        bias = (-rate * dt_days.unsqueeze(1)).masked_fill(~allowed.unsqueeze(1), float("-inf"))
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, attn_mask=bias.reshape(b * self.n_heads, l, l).to(h.dtype), need_weights=False)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.norm2(x)))


class DecayAttentionEncoder(nn.Module):
    """Causal self-attention over a left-padded window: position embeddings counted from the most
    recent event, `layers` DecayAttentionBlocks, a final LayerNorm. Returns outputs (B, L, hidden)
    like the recurrent encoders, so the read-out, the heads and the losses are shared."""

    MAX_POSITIONS = 512

    def __init__(self, in_dim: int, hidden: int, layers: int, n_heads: int, dropout: float):
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden) if in_dim != hidden else nn.Identity()
        self.pos = nn.Embedding(self.MAX_POSITIONS, hidden)
        self.blocks = nn.ModuleList(DecayAttentionBlock(hidden, n_heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, mask: Tensor, cum_days: Tensor) -> Tensor:
        b, l, _ = x.shape
        from_end = (l - 1 - torch.arange(l, device=x.device)).clamp(max=self.MAX_POSITIONS - 1)
        h = (self.inp(x) + self.pos(from_end)) * mask.unsqueeze(-1)
        causal = torch.tril(torch.ones(l, l, dtype=torch.bool, device=x.device))
        # Every position may see itself, so a pad query never has an empty row (no NaN); pad keys
        # are hidden from real queries.
        allowed = (causal & mask.unsqueeze(1)) | torch.eye(l, dtype=torch.bool, device=x.device)
        dt = (cum_days.unsqueeze(2) - cum_days.unsqueeze(1)).clamp_min(0.0)
        for block in self.blocks:
            h = block(h, allowed, dt)
        return self.norm(h) * mask.unsqueeze(-1)


class EbbtideNet(nn.Module):
    """See the module docstring. `forward(batch)` is `loss(batch)`, so DDP / Horovod wrappers just work."""

    def __init__(self, mcfg: Any, n_items: int, n_event_types: int):
        super().__init__()
        if mcfg.encoder not in ENCODERS:
            raise ValueError(f"model.encoder must be one of {tuple(ENCODERS)}, got {mcfg.encoder!r}")
        if n_items <= FIRST_REAL_INDEX:
            raise ValueError(f"n_items={n_items} leaves no real item (0 = pad and 1 = OOV are counted in n_items)")
        self.mcfg = mcfg
        self.n_items, self.n_event_types = int(n_items), int(n_event_types)
        d, h, t, e = mcfg.item_dim, mcfg.hidden_dim, mcfg.time_dim, mcfg.event_type_dim
        self.kind, self.time_aware = ENCODERS[mcfg.encoder]
        self.sampled = self.n_items > mcfg.full_softmax_max_items
        # False: every time input (gaps, hour, session starts, elapsed time) reads as zero, so the
        # same network measures what time is worth (the `ebbtide_no_time` ablation).
        self.use_time = bool(getattr(mcfg, "use_time", True))
        # Which time side inputs the recurrence reads: all | gaps (the hour of week reads as pad) |
        # none (gaps, hour and session starts read as zero). The read-out's ages and the elapsed
        # time stay real, so time still enters through the decayed read-out and the elapsed term.
        self.time_inputs = getattr(mcfg, "time_inputs", "all")
        if self.time_inputs not in ("all", "gaps", "none"):
            raise ValueError(f"model.time_inputs must be all, gaps or none, got {self.time_inputs!r}")
        self.gated = bool(getattr(mcfg, "time_gates", False))

        self.item_emb = nn.Embedding(self.n_items, d, padding_idx=0)
        self.event_emb = nn.Embedding(max(self.n_event_types, FIRST_REAL_INDEX), e, padding_idx=0)
        self.hour_emb = nn.Embedding(HOURS_PER_WEEK + 1, t, padding_idx=0)  # hour + 1; 0 = pad
        self.time_basis = LogTimeBasis()
        # Event type, hour, log gap, session-start and "is a real event" flags (a real first event
        # also has gap 0) are added to the item embedding rather than concatenated: the recurrence
        # then has the input width of a plain item LSTM. No bias, so pad steps stay exactly zero.
        self.side = nn.Linear(e + t + self.time_basis.size + 2, d, bias=False)
        if self.kind == "attention":
            self.rnn = DecayAttentionEncoder(d, h, mcfg.attention_layers, mcfg.attention_heads, mcfg.dropout)
        else:
            self.rnn = (nn.GRU if self.kind == "gru" else nn.LSTM)(d, h, batch_first=True)
        self.drop = nn.Dropout(mcfg.dropout)
        if self.gated:
            # The read-out and elapsed-time gates start at zero: the ranking starts as a plain item
            # sequence model and learns how much the decayed read-out and the elapsed time are worth
            # (on logs whose timestamps say little they can stay near zero and cost nothing). The
            # side-input gate starts open: closed, the recurrence would not see the gaps at first,
            # and the return-time head, which needs them, learned the planted per-user half-lives
            # far worse (Spearman 0.52 against 0.62 open, tests/e2e/test_it_learns.py).
            self.side_gate = nn.Parameter(torch.ones(1))
        if self.time_aware:
            self.elapsed_feat = nn.Linear(self.time_basis.size, t)
            self.readout = DecayReadout(
                h, t, mcfg.decay_heads, mcfg.decay_half_life_min_days, mcfg.decay_half_life_max_days,
                per_user=bool(getattr(mcfg, "user_decay", False)),
            )
            self.elapsed_to_state = nn.Linear(t, h)
            if self.gated:
                self.readout_gate = nn.Parameter(torch.zeros(1))
                self.elapsed_gate = nn.Parameter(torch.zeros(1))
            else:
                self.state_norm = nn.LayerNorm(h)
        self.to_item_space = nn.Linear(h, d)
        # The last item's own embedding, mapped straight into the item space: "what follows X" is
        # the strongest single signal in these logs (a last-item Markov chain is a hard baseline),
        # and a direct path learns it in a few epochs instead of through the recurrence.
        self.last_item_skip = nn.Linear(d, d, bias=False) if mcfg.last_item_skip else None
        self.transitions = getattr(mcfg, "transitions", "none")
        if self.transitions not in ("none", "last", "decayed"):
            raise ValueError(f"model.transitions must be none, last or decayed, got {self.transitions!r}")
        if self.transitions != "none":
            # Zero at the start: the ranking starts as without transitions and learns what they add.
            # (Built from a given weight: no draw from the random stream, so the rest of the
            # network is initialised exactly as without transitions.)
            self.transition = nn.Embedding(self.n_items, d, padding_idx=0, _weight=torch.zeros(self.n_items, d))
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        self.hazard = heads.HazardHead(h)
        # Set by the trainer to sessionize.gap_minutes x 60 (see `loss`); 0 fits every gap.
        self.return_min_gap_s = 0.0
        # Set by the trainer (train.objective): False = one next-item label per window (its target);
        # True = a label at every position of the window (`loss`).
        self.every_position = False
        # Set by the trainer (train.label_positions): with every_position, only the last this many
        # positions of each window carry a label (0 = all of them).
        self.label_positions = 0
        # Set by the trainer (train.label_smoothing).
        self.label_smoothing = 0.0
        # Set by the trainer (train.query_time_uniform_share): the share of training positions whose
        # item ranking is queried at u x (time to the next event), u ~ U(0, 1), instead of at the
        # next event's time (`_query_elapsed`).
        self.query_time_uniform_share = 0.0
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
        if elapsed_s is None or not self.use_time:
            return torch.zeros(b, device=self._device())
        e = torch.as_tensor(elapsed_s, dtype=torch.float32, device=self._device())
        return e.expand(b) if e.dim() == 0 else e.reshape(b)

    def _query_elapsed(self, t_next: Tensor) -> Tensor:
        """The elapsed time at which the item ranking is trained, given each position's time to the
        next event t_next (any shape). In eval mode, or with query_time_uniform_share 0, t_next
        itself (no draw from the random stream, so training is exactly as without the option).
        Otherwise u x t_next: with share p one uniform draw v gives u = min(v / p, 1), i.e. u is
        uniform on [0, 1) for a share p of the positions and 1 (the next event's time) for the rest.

        Why: a query that does not know when the next event comes (the nightly table, at midnight)
        sees the position's state at some elapsed time in [0, t_next], and the next item is still
        the label; trained only at t_next, which is mostly seconds inside a visit, the network never
        sees the hours to days that a nightly query asks about."""
        share = self.query_time_uniform_share
        if not self.training or share <= 0.0:
            return t_next
        v = torch.rand(t_next.shape, device=t_next.device)
        u = v if share >= 1.0 else (v / share).clamp(max=1.0)
        return t_next * u

    def _run_encoder(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        items = self._get(batch, "item_idx", torch.long)
        mask = items > 0
        real = mask.float()
        timed = real if self.use_time else torch.zeros_like(real)
        # The real gaps: the event ages of the read-out (cum_days) and the elapsed-time labels of
        # the item ranking, whatever the recurrence reads (model.time_inputs).
        gap = self._get(batch, "gap_s", torch.float32) * timed
        if self.time_inputs == "none":
            # The recurrence sees neither gaps, hours nor session starts. The return-time head reads
            # the recurrence's state, so it learns the return time from the items, event types and
            # the number of events alone (its labels stay the real gaps); only the elapsed time
            # it is queried at still tells it how long the user has been away.
            side_timed = torch.zeros_like(real)
            gap_in = torch.zeros_like(gap)
        else:
            side_timed, gap_in = timed, gap
        sess = self._get(batch, "session_start", torch.float32) * side_timed
        hour_mask = mask if self.use_time and self.time_inputs == "all" else torch.zeros_like(mask)
        real_ = real.unsqueeze(-1)
        side = torch.cat(
            [
                self.event_emb(self._get(batch, "event_type_idx", torch.long) * mask),
                self.hour_emb((self._get(batch, "hour_of_week", torch.long).clamp(0, HOURS_PER_WEEK - 1) + 1) * hour_mask),
                self.time_basis(gap_in) * real_,
                sess.unsqueeze(-1),
                real_,
            ],
            dim=-1,
        )
        side = self.side(side)
        x = self.item_emb(items) + (self.side_gate * side if self.gated else side)
        # Left padding: pad steps come first with zero item/event vectors, so the output at the
        # last position is the state after the last real event; packing would cost a re-sort.
        # Event times relative to the first slot: t_j - t_i = cum_j - cum_i (days).
        cum_days = torch.cumsum(gap, dim=1) / SECONDS_PER_DAY
        if self.kind == "attention":
            outputs = self.rnn(self.drop(x), mask, cum_days)
        else:
            outputs, _ = self.rnn(self.drop(x))
        last = outputs[:, -1]
        return {"items": items, "mask": mask, "gap": gap, "outputs": outputs, "last": last, "cum_days": cum_days}

    def _states(self, enc: dict[str, Tensor], positions: Tensor | None, elapsed_s: Tensor, return_weights: bool = False):
        """User states (B, Q, H) after the events at `positions` (Q indices; None = the last one),
        each as of elapsed_s (B, Q) seconds later. The read-out at position j sees events 0..j only,
        aged by their time before j plus the elapsed time."""
        outputs = enc["outputs"]
        b, l, _ = outputs.shape
        if positions is None:
            positions = torch.tensor([l - 1], device=outputs.device)
        query = outputs[:, positions]
        if not self.time_aware:
            return (query, None) if return_weights else query
        e_emb = self.elapsed_feat(self.time_basis(elapsed_s))
        cum = enc["cum_days"]
        age = (cum[:, positions].unsqueeze(-1) - cum.unsqueeze(1)) + (elapsed_s / SECONDS_PER_DAY).unsqueeze(-1)  # (B, Q, L)
        causal = torch.arange(l, device=outputs.device).view(1, l) <= positions.view(-1, 1)  # (Q, L)
        see = enc["mask"].unsqueeze(1) & causal.unsqueeze(0)
        read, weights = self.readout(outputs, query, e_emb, age.clamp_min(0.0), see)
        el = self.elapsed_to_state(e_emb.to(query.dtype))
        if self.gated:
            state = query + self.readout_gate * self.drop(read) + self.elapsed_gate * el
        else:
            state = self.state_norm(query + self.drop(read) + el)
        return (state, weights) if return_weights else state

    def _state_at(self, enc: dict[str, Tensor], elapsed_s: Tensor, return_weights: bool = False):
        """The state after the last event, as of elapsed_s (B,) seconds later: (B, H) [and weights (B, heads, L)]."""
        out = self._states(enc, None, elapsed_s.unsqueeze(1), return_weights)
        if return_weights:
            state, w = out
            return state[:, 0], (w[:, :, 0] if w is not None else None)
        return out[:, 0]

    def _item_vectors(self, state: Tensor, last_items: Tensor, trans: Tensor | None = None) -> Tensor:
        z = self.to_item_space(self.drop(state))
        if self.last_item_skip is not None:
            z = z + self.last_item_skip(self.item_emb(last_items))
        if trans is not None:
            z = z + trans
        return z

    @property
    def _decayed_transitions(self) -> bool:
        return self.transitions == "decayed" and self.time_aware

    def _transition(self, enc: dict[str, Tensor], last_items: Tensor, weights: Tensor | None) -> Tensor | None:
        """The transition term in item space for each query: T[last item], or with `decayed` the
        read-out's event weights (B, heads, Q, L) or (B, heads, L), averaged over heads, applied to
        T of every event in the window."""
        if self.transitions == "none":
            return None
        if not self._decayed_transitions or weights is None:
            return self.transition(last_items)
        w = weights.float().mean(dim=1).to(self.transition.weight.dtype)  # (B, Q, L) or (B, L)
        t = self.transition(enc["items"])  # (B, L, D)
        return torch.bmm(w.unsqueeze(1), t).squeeze(1) if w.dim() == 2 else torch.bmm(w, t)

    def _full_logits(self, z: Tensor) -> Tensor:
        logits = F.linear(z, self.item_emb.weight, self.item_bias)  # tied: items score by their input embedding
        return logits.masked_fill(self.unscorable, float("-inf"))

    def _hazard_params(self, enc: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.hazard(enc["last"])

    def _next_item_loss(self, z: Tensor, target: Tensor) -> Tensor:
        """Summed loss of user vectors z (N, D) against their next items (N,), all >= 2."""
        if self.sampled:
            return heads.sampled_softmax_loss(
                z, self.item_emb.weight, self.item_bias, target, self._sample_negatives(z.device), self.item_log_q,
                reduction="sum",
            )
        # Real items only: pad and OOV are never a label, and label smoothing must not spread mass onto them.
        w, bias = self.item_emb.weight[FIRST_REAL_INDEX:], self.item_bias[FIRST_REAL_INDEX:]
        logits = F.linear(z, w, bias).float()
        return F.cross_entropy(logits, target - FIRST_REAL_INDEX, reduction="sum", label_smoothing=self.label_smoothing)

    # ------------------------------------------------------------------ public API

    def encoder_outputs(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """The encoder's pass over the windows, which every read-out below starts from. It does not
        depend on the elapsed time, so a caller that asks several questions of the same windows
        (scores, explanations, churn, interest now and then) passes it as ``enc`` to each instead
        of running the recurrence again: the encoder is most of the cost of every one of them."""
        return self._run_encoder(batch)

    def encode(self, batch: Mapping[str, Any], elapsed_s: Tensor | None = None) -> Tensor:
        """User state (B, hidden_dim) after the last event, as of `elapsed_s` seconds later (default 0)."""
        enc = self._run_encoder(batch)
        return self._state_at(enc, self._elapsed(elapsed_s, enc["last"].shape[0]))

    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Next-item loss plus hazard_weight x the censored return-time NLL. Returns (total, parts).

        Next item: with `every_position` each real position j of the window is trained on the item
        that follows it (the window's next slot, or the row's target at the last slot), scored at the
        time of that next event (in training, with query_time_uniform_share, at a uniform time before
        it for that share of the positions): one window carries up to L labels for the price of one
        recurrence. Otherwise only the target (rows with target_item >= 2). Return time: likewise at every real
        position (the next event's gap; the last position's target time or censoring), or at the last.
        """
        enc = self._run_encoder(batch)
        target = self._get(batch, "target_item", torch.long)
        t_next_s = self._get(batch, "time_to_next_s", torch.float32).clamp_min(0.0)
        censored = self._get(batch, "censored", torch.float32)
        items = enc["items"]
        b, l = items.shape

        if self.every_position:
            labels = torch.cat([items[:, 1:], target.view(b, 1)], dim=1)  # (B, L)
            t_next = torch.cat([enc["gap"][:, 1:], t_next_s.view(b, 1)], dim=1) if self.use_time else torch.zeros(b, l, device=items.device)
            # The item ranking's query time: the next event's, or with query_time_uniform_share a
            # uniform time before it (both the read-out's ages and the elapsed embedding use it).
            t_next = self._query_elapsed(t_next)
            ok = enc["mask"] & (labels >= FIRST_REAL_INDEX)
            if self.label_positions:
                # Windows are right-aligned: the last positions hold the freshest context.
                ok = ok & (torch.arange(l, device=items.device) >= l - self.label_positions)
            # Positions of the batch that have a label at all, so the read-out runs only where needed.
            positions = torch.nonzero(ok.any(0)).flatten()
            states, weights = self._states(enc, positions, t_next[:, positions], return_weights=True)  # (B, Q, H)
            last_items = items[:, positions]
            z = self._item_vectors(states, last_items, self._transition(enc, last_items, weights))
            sel = ok[:, positions]
            item_loss = self._next_item_loss(z[sel], labels[:, positions][sel]) / sel.sum().clamp_min(1)
        else:
            valid = target >= FIRST_REAL_INDEX
            state, weights = self._state_at(enc, self._query_elapsed(self._elapsed(t_next_s, b)), return_weights=True)
            z = self._item_vectors(state, items[:, -1], self._transition(enc, items[:, -1], weights))
            item_loss = self._next_item_loss(z[valid], target[valid]) / valid.sum().clamp_min(1)

        # A return is the start of a new session: an event minutes after the last one continues the
        # same visit and says nothing of how fast interest fades. So the hazard is fitted only to
        # gaps of at least the session gap, conditional on none shorter (left truncation); at
        # scoring time the elapsed time is past the session gap, where this conditioning cancels.
        # Its labels are the true gaps, never the item ranking's query time (`_query_elapsed`): a
        # uniform query time is an input of the ranking, while the hazard is fitted to when the user
        # really came back, and it reads the state after the event, not a state at an elapsed time.
        entry = self.return_min_gap_s / SECONDS_PER_DAY
        if self.every_position:
            # Every real position's time to the next event (observed), the last one's to the target
            # or the censoring time: the return-time head gets as many labels as the item head.
            # Labels, not inputs: the raw gaps even when the time inputs are switched off.
            raw_gap = self._get(batch, "gap_s", torch.float32) * enc["mask"]
            t_days = torch.cat([raw_gap[:, 1:], t_next_s.view(b, 1)], dim=1) / SECONDS_PER_DAY
            cens = torch.cat([torch.zeros(b, l - 1, device=items.device), censored.view(b, 1)], dim=1)
            log_a, log_b = self.hazard(enc["outputs"])
            at_risk = heads.at_risk_after(t_days, entry) & enc["mask"]
            nll = heads.hazard_nll(log_a, log_b, t_days, cens, entry) * enc["mask"]
        else:
            log_a, log_b = self._hazard_params(enc)
            t_days = t_next_s / SECONDS_PER_DAY
            at_risk = heads.at_risk_after(t_days, entry)
            nll = heads.hazard_nll(log_a, log_b, t_days, censored, entry)
        return_loss = nll.sum() / at_risk.sum().clamp_min(1)
        total = item_loss + self.mcfg.hazard_weight * return_loss
        return total, {"next_item": item_loss.detach(), "return_time": return_loss.detach()}

    forward = loss

    def item_scores(self, batch: Mapping[str, Any], elapsed_s: Tensor, enc: dict[str, Tensor] | None = None) -> Tensor:
        """Scores (B, n_items) over the whole catalogue, as of `elapsed_s` seconds after each user's
        last event; pad and OOV are -inf. Only the time_lstm encoder makes them depend on elapsed_s.
        ``enc``: this batch's `encoder_outputs`, when the caller has them."""
        enc = enc if enc is not None else self._run_encoder(batch)
        state, weights = self._state_at(enc, self._elapsed(elapsed_s, enc["last"].shape[0]), return_weights=True)
        last_items = enc["items"][:, -1]
        return self._full_logits(self._item_vectors(state, last_items, self._transition(enc, last_items, weights))).float()

    def return_time(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Return-time figures as of the last event (elapsed 0); see `return_time_at`."""
        return self.return_time_at(batch, None)

    def return_time_at(self, batch: Mapping[str, Any], elapsed_s: Tensor | None,
                       enc: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Return-time figures as of `elapsed_s` seconds after the last event, given no return so far.

        p_return_7d / p_return_30d: P(an event within 7 / 30 days from then); p_return_ever: 1 - cure
        fraction; expected_days_to_return: mean days from then to the return given a return within
        model.return_horizon_days; half_life_days: ln 2 / b, the time for the return hazard to halve;
        readout_half_life_days: how fast the read-out forgets this user's events
        (`readout_half_life_days`). ``enc``: as in `item_scores`.
        """
        enc = enc if enc is not None else self._run_encoder(batch)
        elapsed = self._elapsed(elapsed_s, enc["last"].shape[0])
        e_days = elapsed / SECONDS_PER_DAY
        a, b = heads.hazard_rates(*self._hazard_params(enc))
        return {
            "readout_half_life_days": self._readout_half_life(enc, elapsed, b),
            "p_return_7d": heads.p_return_within(a, b, 7.0, e_days),
            "p_return_30d": heads.p_return_within(a, b, 30.0, e_days),
            "p_return_ever": heads.p_return_ever(a, b, e_days),
            "expected_days_to_return": heads.expected_days_to_return(a, b, e_days, self.mcfg.return_horizon_days),
            "half_life_days": heads.half_life_days(b),
            "hazard_a": a,
            "hazard_b": b,
        }

    def _event_weights(self, enc: dict[str, Tensor], elapsed: Tensor) -> Tensor:
        """How much each event of the window still counts (B, L) at `elapsed` seconds after the last
        one. Time-aware encoders: the read-out's weight on the event, averaged over heads (the weights
        the decayed transitions use; the sink takes what has faded). lstm / gru, which have no read-out:
        exp(-b x age), the user's return-hazard rate b, so the weight halves every return half-life."""
        if self.time_aware:
            _, w = self._state_at(enc, elapsed, return_weights=True)
            return w.float().mean(dim=1)
        _, b = heads.hazard_rates(*self._hazard_params(enc))
        age = (enc["cum_days"][:, -1:] - enc["cum_days"]) + (elapsed / SECONDS_PER_DAY).unsqueeze(1)
        return torch.exp(-b.float().unsqueeze(1) * age)

    def category_interest(self, batch: Mapping[str, Any], item_category: Tensor, elapsed_s: Tensor | None,
                          enc: dict[str, Tensor] | None = None) -> Tensor:
        """Decayed interest per category (B, n_categories), n_categories = item_category.max() + 1.

        time_lstm: the read-out's attention mass on the user's events of each category at the given
        elapsed time (averaged over heads); it sums to at most 1 and shrinks as interest fades into
        the sink. lstm / gru: each event weighted by exp(-b * age) with the user's hazard rate b,
        averaged over the window. ``enc``: as in `item_scores`.
        """
        enc = enc if enc is not None else self._run_encoder(batch)
        bsz = enc["last"].shape[0]
        elapsed = self._elapsed(elapsed_s, bsz)
        cat_of = torch.as_tensor(item_category, device=self._device()).long()
        cats = cat_of[enc["items"]].clamp_min(0)
        n_cat = int(cat_of.max().item()) + 1
        weights = self._event_weights(enc, elapsed)
        if not self.time_aware:
            weights = weights / enc["mask"].sum(1, keepdim=True).clamp_min(1)
        weights = weights * enc["mask"] * (enc["items"] >= FIRST_REAL_INDEX)
        out = torch.zeros(bsz, n_cat, device=weights.device)
        return out.scatter_add_(1, cats, weights)

    def explain(self, batch: Mapping[str, Any], elapsed_s: Tensor | None, item_idx: Tensor, top: int = 3,
                enc: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Which past events weighed most for each of K items per user, as of `elapsed_s` seconds
        after the last event: item_idx (B, K) -> positions (B, K, top) into the window (long, -1 where
        fewer events count) and weights (B, K, top) (float, 0 at -1), largest first.

        The attribution of event j to item i:
        - `transitions: decayed` (time-aware encoders): wbar_j (T[item_j] . E_i), exactly event j's
          term of what the transitions add to item i's score (E_i . sum_j wbar_j T[item_j]), so the
          explanation is the model's own arithmetic, not a proxy of it;
        - other time-aware models: wbar_j max(0, E_item_j . E_i), the read-out's weight on the event
          times how alike the two items are in the model's (tied) item space;
        - lstm / gru: max(0, E_item_j . E_i) exp(-b x age_j), with the return half-life as the decay.
        wbar is the read-out's weight on the event averaged over heads (`_event_weights`).

        A weight is the event's share of the positive attributions of all the window's events, in
        [0, 1]: comparable across users, encoders and model versions, where raw attributions are
        in the model's own units. Only positive attributions explain (an event that pulls an item
        down is no reason for it); pads and OOV events (no item id to show) never do.

        An item that no event attributes positively to (it ranks by the user vector as a whole, its
        bias or the last item's skip / transition terms, none of which splits over events) is
        explained by the events the read-out weighs most, wbar_j as shares of the window's total:
        the events the user vector is made of (for a user gone so long that those weights underflow,
        `_faded_weights`). So every recommendation of a user with a known item in the window has a
        reason. ``enc``: as in `item_scores`.
        """
        enc = enc if enc is not None else self._run_encoder(batch)
        items = enc["items"]
        b, l = items.shape
        w = self._event_weights(enc, self._elapsed(elapsed_s, b))  # (B, L)
        target = self.item_emb(torch.as_tensor(item_idx, device=self._device()).long()).float()  # (B, K, D)
        if self._decayed_transitions:
            contrib = w.unsqueeze(1) * torch.bmm(target, self.transition(items).float().transpose(1, 2))
        else:
            contrib = w.unsqueeze(1) * torch.bmm(target, self.item_emb(items).float().transpose(1, 2)).clamp_min(0.0)
        real = enc["mask"] & (items >= FIRST_REAL_INDEX)
        contrib = contrib.masked_fill(~real.unsqueeze(1), 0.0).clamp_min(0.0)  # (B, K, L)
        readout = w.float().masked_fill(~real, 0.0).clamp_min(0.0)  # (B, L)
        readout = torch.where(readout.sum(-1, keepdim=True) > 0, readout, self._faded_weights(enc, real))
        contrib = torch.where(contrib.sum(-1, keepdim=True) > 0, contrib, readout.unsqueeze(1).expand_as(contrib))
        total = contrib.sum(-1, keepdim=True)
        val, pos = torch.topk(contrib, min(top, l), dim=-1)
        found = val > 0
        weights = torch.where(found, val / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
        positions = torch.where(found, pos, -1)
        if top > l:  # a window shorter than `top`: the missing slots read as missing
            positions = F.pad(positions, (0, top - l), value=-1)
            weights = F.pad(weights, (0, top - l), value=0.0)
        return positions, weights

    def _faded_weights(self, enc: dict[str, Tensor], real: Tensor) -> Tensor:
        """The read-out's weights of a user gone so long that every one underflows to 0 (float32 holds
        exp(-x) down to x ~ 100: 30 days at a rate of 3.3 a day): their ratios are still defined, so
        the events are weighed by the return-hazard decay relative to the latest known event, which
        keeps weight 1. (B, L), 0 at pads and OOV events."""
        _, b = heads.hazard_rates(*self._hazard_params(enc))
        days = enc["cum_days"].float()
        latest = days.masked_fill(~real, float("-inf")).amax(-1, keepdim=True)
        return torch.exp(-b.float().unsqueeze(1) * (latest - days).clamp_min(0.0)).masked_fill(~real, 0.0)

    def readout_half_life_days(self, batch: Mapping[str, Any], elapsed_s: Tensor | None = None) -> Tensor:
        """Each user's read-out half-life (B,) in days: ln 2 over the user's decay rate of the read-out,
        the heads' rates averaged with the weight each head puts on the user's events: how fast the
        model forgets what the user did when it ranks items. Encoders without a read-out: the return
        half-life. (On generated logs with planted per-user half-lives this one does not recover them,
        the return half-life does: docs/training.md; so the tables publish the return half-life.)
        """
        enc = self._run_encoder(batch)
        _, b = heads.hazard_rates(*self._hazard_params(enc))
        return self._readout_half_life(enc, self._elapsed(elapsed_s, enc["last"].shape[0]), b)

    def _readout_half_life(self, enc: dict[str, Tensor], elapsed: Tensor, hazard_b: Tensor) -> Tensor:
        if not self.time_aware:
            return heads.half_life_days(hazard_b)
        _, w = self._state_at(enc, elapsed, return_weights=True)  # (B, heads, L)
        mass = w.float().sum(-1) + 1e-12
        rates = self.readout.rates(enc["last"]).float()  # (B, heads) per-user, or (heads,)
        rate = (mass * rates).sum(-1) / mass.sum(-1)
        return math.log(2.0) / rate

    def decay_half_lives_days(self) -> Tensor | None:
        """The read-out heads' half-lives (time_lstm only): how fast each head forgets an event."""
        return math.log(2.0) / self.readout.rates().detach() if self.time_aware else None
