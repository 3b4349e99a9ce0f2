"""Synthetic raw behaviour logs with a planted truth: per-user interest half-lives, return hazards, churn.

The generative story (docs/architecture.md, "Synthetic data", says the same in prose):

* User u arrives at a uniform time in the first ``arrival_fraction`` of the window and has an
  interest half-life h_u (log-uniform in [half_life_min_days, half_life_max_days]).
* Return behaviour. After each event that ends a session, the hazard of coming back decays
  with the elapsed time e:  lambda_u(e) = a_u * 2^(-e / h_u)  (a_u per day). Its integral is
  finite, m_u = a_u h_u / ln 2, so P(never return) = exp(-m_u) > 0: users who do not come back
  soon fade away for good. Return times are drawn exactly by inverting
  S_u(e) = exp(-m_u (1 - 2^(-e/h_u))). m_u = ln(expected sessions), and the expected sessions are
  scaled so that the log holds about ``events_per_user`` events per user on average.
* Interest. interest_uc(t) = prior_uc + interest_boost * 2^(-(t - t_last_uc) / h_u), with
  prior_u ~ Dirichlet and t_last_uc the user's last event in category c. A new item's category
  is drawn with probability proportional to interest, so interest fades with the same half-life.
* Items. Within a category, items have a Zipf popularity and a fixed order; with probability
  ``successor_prob`` the next item is the successor (in that order) of the user's last item in
  the category, so a sequence model beats popularity clearly.
* Sessions hold a geometric number of events (mean ``session_events_mean``) seconds to minutes
  apart; event types follow a funnel view -> click -> cart -> purchase on the same item.

Everything is vectorized across users: each loop step produces the next event of every user who
is still active, so the loop runs (max events of one user) times, not (events) times.
``generate(conf)`` is the pure entry point (tests, benchmarks); ``write(result, out)`` and the
``ebbtide synth`` command put the raw files and the truth tables on disk.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ebbtide.config import ConfigError, SynthConf, parse_utc
from ebbtide.log import get_logger, step

log = get_logger("synth")

EVENT_TYPES = ("view", "click", "cart", "purchase")
# Model settings for these logs, chosen on their validation split (bench/tune.py; docs/training.md):
# the successor rule is a "what follows j" map, which the transition table holds directly, and the
# small catalogue over-fits from the second pass on without the stronger dropout; these logs have no
# hour-of-week pattern, so the recurrence reads the gaps but not the hour (whose 169-row embedding
# could only over-fit: +3.7 % nightly NDCG@10 on validation). The demo and `make results` train
# generated data with them; other data keeps conf/base.yaml's model.
MODEL_SETTINGS = ("model.transitions=last", "model.dropout=0.5", "model.time_inputs=gaps")
# Probability that the next event of a session moves one step down the funnel on the same item
# (view -> click, click -> cart, cart -> purchase); otherwise the user views a new item.
FUNNEL_ADVANCE = np.array([0.25, 0.30, 0.40])
# Home time zones (minutes east of UTC) for the ISO-8601 timestamps of JSON output.
TZ_OFFSETS_MIN = np.array([-480, -300, 0, 60, 120, 330, 540], dtype=np.int64)
# Within a session, events are seconds to minutes apart (log-normal), never 15 minutes or more,
# so a 30-minute sessionizer sees a planted session as one session.
INTRA_GAP_SIGMA = 1.0
INTRA_GAP_MAX_S = 900.0
# Spread of expected sessions across users (log-normal sigma): loyalty varies, so churn varies.
LOYALTY_SIGMA = 0.75
# Category popularity: shares of a Zipf(0.7) over categories are the Dirichlet base of priors.
CATEGORY_ZIPF = 0.7
WRITE_CHUNK_ROWS = 1_000_000

EXT = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}
# Kinds of deliberately broken rows per output format (parquet is typed: no unparsable text).
BAD_KINDS = {
    "parquet": ("missing user_id", "missing item_id", "missing ts", "ts out of range"),
    "csv": ("missing user_id", "missing item_id", "unparsable ts", "ts out of range", "bad value type"),
    "json": ("missing user_id", "missing item_id", "unparsable ts", "ts out of range", "bad value type",
             "malformed json"),
}

RAW_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("ts", pa.int64()),          # epoch milliseconds, UTC
    ("event_type", pa.string()),
    ("value", pa.float64()),
    ("category", pa.string()),
])


@dataclass
class SynthResult:
    """Events in the raw contract (ts as epoch ms, sorted by (ts, event_id)) plus the planted truth."""

    events: pa.Table
    users: pd.DataFrame
    items: pd.DataFrame
    user_categories: pd.DataFrame
    meta: dict[str, Any]
    # Per event: the user's row in `users` (lets writers look up the home time zone quickly).
    event_user_index: np.ndarray


# --------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------


def return_survival(e_days, m, h_days):
    """P(no return within e days after a session's last event) = exp(-m (1 - 2^(-e/h)))."""
    return np.exp(-m * (1.0 - np.exp2(-np.asarray(e_days, dtype=float) / h_days)))


def p_return_within(window_days, elapsed_days, m, h_days):
    """P(return within the next window days | no return during the elapsed days)."""
    elapsed = np.asarray(elapsed_days, dtype=float)
    return 1.0 - np.exp(-m * (np.exp2(-elapsed / h_days) - np.exp2(-(elapsed + window_days) / h_days)))


def draw_return_days(u, m, h_days):
    """Inverse CDF of the return time: inf where the user never returns (u <= exp(-m))."""
    u = np.asarray(u, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = 1.0 + np.log(u) / m
        e = -h_days * np.log2(x)
    return np.where(x > 0, e, np.inf)


def _validate(conf: SynthConf) -> None:
    checks = [
        (conf.users >= 1, "synth.users must be >= 1"),
        (conf.categories >= 1, "synth.categories must be >= 1"),
        (conf.items >= conf.categories, "synth.items must be >= synth.categories (each category needs an item)"),
        (conf.events_per_user >= 1, "synth.events_per_user must be >= 1"),
        (conf.days >= 1, "synth.days must be >= 1"),
        (conf.files >= 1, "synth.files must be >= 1"),
        (0 < conf.half_life_min_days <= conf.half_life_max_days,
         "synth.half_life_min_days must be > 0 and <= synth.half_life_max_days"),
        (conf.session_events_mean >= 1, "synth.session_events_mean must be >= 1"),
        (0 <= conf.successor_prob <= 1, "synth.successor_prob must be in [0, 1]"),
        (0 < conf.arrival_fraction <= 1, "synth.arrival_fraction must be in (0, 1]"),
        (0 <= conf.bad_rows < 1, "synth.bad_rows must be in [0, 1)"),
        (conf.category_concentration > 0, "synth.category_concentration must be > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _start_ms(conf: SynthConf) -> int:
    return int(parse_utc(conf.start, "synth.start").timestamp() * 1000)


def _catalogue(conf: SynthConf, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Items laid out by category, in each category's sequence order (successor = next index)."""
    n_items, n_cat = conf.items, conf.categories
    sizes = np.bincount(rng.permutation(np.arange(n_items) % n_cat), minlength=n_cat)
    cat_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    item_cat = np.repeat(np.arange(n_cat), sizes)
    pos = np.arange(n_items) - cat_start[item_cat]
    successor = np.where(pos + 1 < sizes[item_cat], np.arange(n_items) + 1, cat_start[item_cat])
    # Popularity rank is independent of the sequence order, so "successor" is not "popular".
    rank = np.empty(n_items, dtype=np.int64)
    for c in range(n_cat):
        rank[cat_start[c]: cat_start[c] + sizes[c]] = rng.permutation(sizes[c])
    weight = 1.0 / (rank + 1.0) ** conf.zipf_exponent
    cat_total = np.bincount(item_cat, weights=weight, minlength=n_cat)
    pop_in_cat = weight / cat_total[item_cat]
    within = np.cumsum(weight) - np.repeat(np.cumsum(cat_total) - cat_total, sizes)
    # cum_flat[j] = c + (weight of category c up to and including j) / total_c, so that
    # searchsorted(cum_flat, c + u) samples an item of category c for u in [0, 1).
    cum_flat = item_cat + within / cat_total[item_cat]
    cum_flat[cat_start + sizes - 1] = np.arange(n_cat) + 1.0
    price = np.round(rng.lognormal(np.log(25.0), 0.8, n_items), 2)
    public = rng.permutation(n_items)  # ids do not give the order away
    return dict(item_cat=item_cat, successor=successor, cum_flat=cum_flat, pop_in_cat=pop_in_cat,
                rank=rank, price=price, public=public, sizes=sizes)


def _users(conf: SynthConf, rng: np.random.Generator, horizon_s: float) -> dict[str, np.ndarray]:
    n, n_cat = conf.users, conf.categories
    h = np.exp(rng.uniform(np.log(conf.half_life_min_days), np.log(conf.half_life_max_days), n))
    loyalty_noise = rng.lognormal(0.0, LOYALTY_SIGMA, n)
    arrival = rng.uniform(0.0, conf.arrival_fraction * horizon_s, n)
    share = 1.0 / (np.arange(n_cat) + 1.0) ** CATEGORY_ZIPF
    share = rng.permutation(share / share.sum())
    g = rng.gamma(conf.category_concentration * n_cat * share, size=(n, n_cat))
    prior = g / np.maximum(g.sum(axis=1, keepdims=True), 1e-300)
    prior = np.where(np.isfinite(prior), prior, 1.0 / n_cat)
    tz = rng.choice(TZ_OFFSETS_MIN, n)
    return dict(h=h, loyalty_noise=loyalty_noise, arrival=arrival, prior=prior, tz=tz, share=share)


def _loyalty(scale: float, noise: np.ndarray) -> np.ndarray:
    """m_u = ln(expected sessions); expected sessions >= 1 so that m_u >= 0."""
    return np.log1p(scale * noise)


def _pilot_events_per_user(scale, h, noise, arrival, horizon_s, session_mean, seed) -> float:
    """Events per user the session process yields for a given loyalty scale (sessions x mean length)."""
    rng = np.random.default_rng(seed)  # same draws for every scale: a smooth, monotone search
    m = _loyalty(scale, noise)
    t = arrival.copy()
    sessions = np.zeros(len(t))
    idx = np.arange(len(t))
    while idx.size:
        sessions[idx] += 1
        e = draw_return_days(rng.random(idx.size), m[idx], h[idx])
        t[idx] = t[idx] + e * 86400.0
        idx = idx[t[idx] < horizon_s]
    return float(sessions.mean() * session_mean)


def _calibrate(conf: SynthConf, users: dict, horizon_s: float, seed: int) -> float:
    """Loyalty scale whose sessions give about `events_per_user` events per user (bisection)."""
    target = conf.events_per_user
    n = min(conf.users, 4000)
    args = (users["h"][:n], users["loyalty_noise"][:n], users["arrival"][:n], horizon_s,
            conf.session_events_mean, seed)
    lo, hi = math.log(1e-3), math.log(1e4)
    mid = math.log(max(target / conf.session_events_mean - 1.0, 1e-3))
    got = float("nan")
    for _ in range(30):
        got = _pilot_events_per_user(math.exp(mid), *args)
        if abs(got - target) <= 0.005 * target:
            break
        if got < target:
            lo = mid
        else:
            hi = mid
        mid = (lo + hi) / 2
    if abs(got - target) > 0.05 * target:
        log.warning("asked for %g events per user, the %d-day window gives about %.1f: "
                    "change synth.days or synth.half_life_max_days", target, conf.days, got)
    return math.exp(mid)


def _simulate(conf: SynthConf, cat: dict, users: dict, m: np.ndarray, horizon_s: float,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Event by event for all active users at once. Returns per-event arrays and per-user end state."""
    n_users, n_cat = conf.users, conf.categories
    h_s = users["h"] * 86400.0
    prior = users["prior"]
    boost = conf.interest_boost
    item_cat, successor, cum_flat = cat["item_cat"], cat["successor"], cat["cum_flat"]
    gap_mu = math.log(conf.intra_gap_median_s)
    p_session = 1.0 / conf.session_events_mean

    t = users["arrival"].copy()
    k_rem = rng.geometric(p_session, n_users)
    prev_item = np.full(n_users, -1, dtype=np.int64)
    prev_type = np.full(n_users, -1, dtype=np.int64)       # -1: the next event opens a session
    t_last_c = np.full((n_users, n_cat), -np.inf)
    last_item_c = np.full((n_users, n_cat), -1, dtype=np.int64)
    n_events = np.zeros(n_users, dtype=np.int64)
    n_sessions = np.zeros(n_users, dtype=np.int64)
    last_t = np.full(n_users, np.nan)
    next_t = np.full(n_users, np.inf)                       # first event after the window
    in_session_at_end = np.zeros(n_users, dtype=bool)

    out_u, out_i, out_t, out_e = [], [], [], []
    idx = np.flatnonzero(t < horizon_s)
    steps = 0
    t0 = time.perf_counter()
    while idx.size:
        steps += 1
        n = idx.size
        tt = t[idx]
        pt = prev_type[idx]
        advance = np.zeros(n, dtype=bool)
        in_funnel = (pt >= 0) & (pt < len(FUNNEL_ADVANCE))
        advance[in_funnel] = rng.random(int(in_funnel.sum())) < FUNNEL_ADVANCE[pt[in_funnel]]
        etype = np.where(advance, pt + 1, 0)
        item = np.where(advance, prev_item[idx], -1)

        fresh = ~advance
        nu = idx[fresh]
        if nu.size:
            decay = np.exp2((t_last_c[nu] - tt[fresh, None]) / h_s[nu, None])
            cum = np.cumsum(prior[nu] + boost * decay, axis=1)
            r = rng.random(nu.size) * cum[:, -1]
            c = np.minimum((cum <= r[:, None]).sum(axis=1), n_cat - 1)
            last = last_item_c[nu, c]
            follow = (last >= 0) & (rng.random(nu.size) < conf.successor_prob)
            popular = np.searchsorted(cum_flat, c + rng.random(nu.size), side="right")
            item[fresh] = np.where(follow, successor[last], popular)

        c_all = item_cat[item]
        out_u.append(idx.astype(np.int32))
        out_i.append(item.astype(np.int32))
        out_t.append(tt)
        out_e.append(etype.astype(np.int8))

        t_last_c[idx, c_all] = tt
        last_item_c[idx, c_all] = item
        prev_item[idx] = item
        prev_type[idx] = etype
        n_events[idx] += 1
        n_sessions[idx] += pt < 0
        last_t[idx] = tt

        k = k_rem[idx] - 1
        cont = k > 0
        gap = np.empty(n)
        n_cont = int(cont.sum())
        gap[cont] = np.clip(rng.lognormal(gap_mu, INTRA_GAP_SIGMA, n_cont), 1.0, INTRA_GAP_MAX_S)
        ends = ~cont
        ui = idx[ends]
        gap[ends] = draw_return_days(rng.random(ui.size), m[ui], users["h"][ui]) * 86400.0
        k[ends] = rng.geometric(p_session, ui.size)
        prev_type[ui] = -1
        k_rem[idx] = k
        t_new = tt + gap
        t[idx] = t_new
        leaving = t_new >= horizon_s
        gone = idx[leaving]
        next_t[gone] = t_new[leaving]
        in_session_at_end[gone] = cont[leaving]
        idx = idx[~leaving]
        if steps % 200 == 0:
            log.info("simulated %d event steps, %d users still active, %.1f s",
                     steps, idx.size, time.perf_counter() - t0)

    return dict(
        user=np.concatenate(out_u), item=np.concatenate(out_i), t=np.concatenate(out_t),
        etype=np.concatenate(out_e), n_events=n_events, n_sessions=n_sessions, last_t=last_t,
        next_t=next_t, in_session_at_end=in_session_at_end, t_last_c=t_last_c, steps=steps,
    )


def _names(prefix: str, n: int) -> pa.Array:
    width = len(str(max(n - 1, 0)))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], pa.string())


def generate(conf: SynthConf) -> SynthResult:
    """Simulate the whole log in memory. Deterministic for a given conf (seed included)."""
    _validate(conf)
    start_ms = _start_ms(conf)
    horizon_s = conf.days * 86400.0
    seeds = np.random.SeedSequence(conf.seed).spawn(4)
    cat = _catalogue(conf, np.random.default_rng(seeds[0]))
    users = _users(conf, np.random.default_rng(seeds[1]), horizon_s)
    with step(log, f"calibrating loyalty for {conf.events_per_user:g} events per user"):
        scale = _calibrate(conf, users, horizon_s, int(seeds[2].generate_state(1)[0]))
    m = _loyalty(scale, users["loyalty_noise"])
    rng = np.random.default_rng(seeds[3])
    with step(log, f"simulating {conf.users} users over {conf.days} days"):
        sim = _simulate(conf, cat, users, m, horizon_s, rng)

    with step(log, f"assembling {len(sim['user'])} events"):
        ts_ms = start_ms + np.round(sim["t"] * 1000.0).astype(np.int64)
        # Stable: equal timestamps keep the simulation's (deterministic) order; ids follow this order.
        order = np.argsort(ts_ms, kind="stable")
        user, item, etype, ts_ms = sim["user"][order], sim["item"][order], sim["etype"][order], ts_ms[order]
        n = len(order)
        # value: dwell seconds for views, the item's price for cart and purchase, none for clicks.
        value = np.full(n, np.nan)
        views = etype == 0
        value[views] = np.round(rng.lognormal(math.log(30.0), 1.0, int(views.sum())), 1)
        priced = etype >= 2
        value[priced] = cat["price"][item[priced]]
        user_names = _names("u", conf.users)
        item_names = _names("i", conf.items)
        cat_names = _names("c", conf.categories)
        event_ids = pc.binary_join_element_wise(
            f"s{conf.seed}-", pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), "")
        events = pa.table([
            event_ids,
            user_names.take(pa.array(user)),
            item_names.take(pa.array(cat["public"][item])),
            pa.array(ts_ms),
            pa.array(EVENT_TYPES, pa.string()).take(pa.array(etype)),
            pa.array(value, mask=np.isnan(value)),
            cat_names.take(pa.array(cat["item_cat"][item])),
        ], schema=RAW_SCHEMA)

    truth_users, truth_cats = _truth_users(conf, users, m, sim, horizon_s, start_ms, user_names, cat_names)
    truth_items = pd.DataFrame({
        "item_id": item_names.take(pa.array(cat["public"])).to_numpy(zero_copy_only=False),
        "category": cat_names.take(pa.array(cat["item_cat"])).to_numpy(zero_copy_only=False),
        "position_in_category": np.arange(conf.items) - np.repeat(
            np.concatenate([[0], np.cumsum(cat["sizes"])[:-1]]), cat["sizes"]),
        "successor_item_id": item_names.take(pa.array(cat["public"][cat["successor"]])).to_numpy(
            zero_copy_only=False),
        "popularity_rank_in_category": cat["rank"],
        "p_in_category": cat["pop_in_cat"],
        "price": cat["price"],
    }).sort_values("item_id", ignore_index=True)
    meta = {
        "story": "hazard a*2^(-e/h); interest prior + boost*2^(-dt/h); Zipf + successor items; funnel sessions",
        "conf": dataclasses.asdict(conf),
        "start": datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc).isoformat(),
        "end": datetime.fromtimestamp((start_ms + horizon_s * 1000) / 1000, tz=timezone.utc).isoformat(),
        "end_ms": int(start_ms + horizon_s * 1000),
        "events": int(len(events)),
        "loyalty_scale": scale,
        "event_steps": int(sim["steps"]),
        "churned_fraction": float(truth_users["churned"].mean()),
    }
    return SynthResult(events, truth_users, truth_items, truth_cats, meta, user)


def _truth_users(conf, users, m, sim, horizon_s, start_ms, user_names, cat_names):
    h = users["h"]
    elapsed_d = (horizon_s - sim["last_t"]) / 86400.0
    mid = sim["in_session_at_end"]
    p7 = np.where(mid, 1.0, p_return_within(7.0, elapsed_d, m, h))
    p30 = np.where(mid, 1.0, p_return_within(30.0, elapsed_d, m, h))
    p_ever = np.where(mid, 1.0, 1.0 - np.exp(-m * np.exp2(-elapsed_d / h)))
    # Interest by category at the end of the window (what a nightly score would see).
    interest = users["prior"] + conf.interest_boost * np.exp2(
        (sim["t_last_c"] - horizon_s) / (h[:, None] * 86400.0))
    to_ms = lambda s: pd.to_datetime(start_ms + np.round(s * 1000.0), unit="ms", utc=True)  # noqa: E731
    next_t = sim["next_t"]
    finite = np.isfinite(next_t)
    truth = pd.DataFrame({
        "user_id": user_names.to_numpy(zero_copy_only=False),
        "interest_half_life_days": h,
        "hazard_a_per_day": m * math.log(2.0) / h,
        "loyalty_m": m,
        "p_never_return": np.exp(-m),
        "first_ts": to_ms(users["arrival"]),
        "last_ts": to_ms(sim["last_t"]),
        "n_events": sim["n_events"],
        "n_sessions": sim["n_sessions"],
        "days_since_last_event": elapsed_d,
        "p_return_7d": p7,
        "p_return_30d": p30,
        "p_return_ever": p_ever,
        "churned": elapsed_d > conf.churn_days,
        # The simulated future: the first event after the window (null: never came back).
        "next_event_ts": pd.Series(to_ms(np.where(finite, next_t, 0.0))).where(finite),
        "top_category_prior": cat_names.take(pa.array(users["prior"].argmax(axis=1))).to_numpy(
            zero_copy_only=False),
        "top_category_at_end": cat_names.take(pa.array(interest.argmax(axis=1))).to_numpy(
            zero_copy_only=False),
        "tz_offset_minutes": users["tz"].astype(np.int32),
    })
    uu, cc = np.nonzero(np.isfinite(sim["t_last_c"]))
    cats = pd.DataFrame({
        "user_id": user_names.take(pa.array(uu)).to_numpy(zero_copy_only=False),
        "category": cat_names.take(pa.array(cc)).to_numpy(zero_copy_only=False),
        "prior": users["prior"][uu, cc],
        "last_ts": to_ms(sim["t_last_c"][uu, cc]),
        "interest_at_end": interest[uu, cc],
    })
    return truth, cats


# --------------------------------------------------------------------------------------
# Bad rows and file formats (edges)
# --------------------------------------------------------------------------------------


def _bad_rows_for_chunk(chunk: pa.Table, fraction: float, fmt: str, rng: np.random.Generator,
                        id_prefix: str):
    """Copies of random rows of this chunk, each broken one way, so that fraction of rows is bad."""
    n_bad = int(round(fraction / (1.0 - fraction) * chunk.num_rows)) if fraction > 0 else 0
    if n_bad == 0 or chunk.num_rows == 0:
        return None, np.zeros(0, dtype=np.int64)
    kinds = BAD_KINDS[fmt]
    src = np.sort(rng.integers(0, chunk.num_rows, n_bad))
    kind = rng.integers(0, len(kinds), n_bad)
    bad = chunk.take(pa.array(src))
    ids = pc.binary_join_element_wise(id_prefix, pc.cast(pa.array(np.arange(n_bad)), pa.string()), "")
    bad = bad.set_column(0, "event_id", ids)
    names = np.array(kinds, dtype=object)[kind]
    # Typed breakages here; text-level ones (unparsable ts, bad value type, malformed json) at write.
    user = pc.if_else(pa.array(names == "missing user_id"), pa.scalar(None, pa.string()), bad["user_id"])
    itm = pc.if_else(pa.array(names == "missing item_id"), pa.scalar(None, pa.string()), bad["item_id"])
    far = np.where(rng.random(n_bad) < 0.5, 315_532_800_000, 4_102_444_800_000)  # 1980 or 2100
    ts = bad["ts"].to_numpy()
    ts = np.where(names == "ts out of range", far, ts)
    ts_arr = pa.array(ts, mask=(names == "missing ts"))
    bad = bad.set_column(1, "user_id", user).set_column(2, "item_id", itm).set_column(3, "ts", ts_arr)
    # Bad rows sit right after the row they copy: inside the log, not at its end.
    return bad.append_column("_bad", pa.array(names, pa.string())), src


def _interleave(chunk: pa.Table, bad: Optional[pa.Table], src: np.ndarray) -> pa.Table:
    chunk = chunk.append_column("_bad", pa.nulls(chunk.num_rows, pa.string()))
    if bad is None:
        return chunk
    key = np.concatenate([np.arange(chunk.num_rows, dtype=float), src + 0.5])
    return pa.concat_tables([chunk, bad]).take(pa.array(np.argsort(key, kind="stable")))


def _iso_ts(ts: pa.Array, tz_min: np.ndarray) -> pa.Array:
    """Epoch ms -> 'YYYY-MM-DDTHH:MM:SS.mmm+hh:mm' in the user's home zone."""
    local = pc.add(ts, pa.array(tz_min * 60_000)).cast(pa.timestamp("ms"))
    zones = pa.array([f"{'-' if z < 0 else '+'}{abs(z) // 60:02d}:{abs(z) % 60:02d}" for z in TZ_OFFSETS_MIN])
    offs = zones.take(pa.array(np.searchsorted(TZ_OFFSETS_MIN, tz_min)))
    # cast + replace is ~5x faster than strftime and keeps the milliseconds.
    text = pc.replace_substring(pc.cast(local, pa.string()), " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(text, offs, "")


def _text_columns(t: pa.Table, fmt: str, tz_min: np.ndarray) -> dict[str, pa.Array]:
    bad = t["_bad"].combine_chunks()
    unparsable = pc.equal(bad, "unparsable ts").fill_null(False)
    bad_value = pc.equal(bad, "bad value type").fill_null(False)
    ts = t["ts"].combine_chunks()
    ts_s = _iso_ts(ts, tz_min) if fmt == "json" else pc.cast(ts, pa.string())
    ts_s = pc.if_else(unparsable, pa.scalar("not-a-timestamp"), ts_s)
    val = pc.cast(t["value"].combine_chunks(), pa.string())
    val = pc.if_else(bad_value, pa.scalar("abc"), val)
    cols = {name: t[name].combine_chunks() for name in RAW_SCHEMA.names}
    cols["ts"], cols["value"] = ts_s, val
    return cols


def _json_lines(cols: dict[str, pa.Array], bad: pa.Array) -> pa.Array:
    parts: list[Any] = []
    for i, name in enumerate(RAW_SCHEMA.names):
        v = cols[name]
        if name == "value":
            numeric = pc.if_else(pc.equal(v, "abc").fill_null(False), pc.binary_join_element_wise('"', v, '"', ""), v)
            lit = numeric.fill_null("null")
        else:
            lit = pc.binary_join_element_wise('"', v, '"', "").fill_null("null")
        parts += [("{" if i == 0 else ",") + f'"{name}":', lit]
    lines = pc.binary_join_element_wise(*parts, "}", "")
    malformed = pc.equal(bad, "malformed json").fill_null(False)
    cut = pc.utf8_slice_codeunits(lines, 0, -15)
    return pc.binary_join_element_wise(pc.if_else(malformed, cut, lines), "\n", "")


def _string_bytes(arr: pa.Array) -> memoryview:
    """The concatenated bytes of a string array (its data buffer), without a copy."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset: arr.offset + len(arr) + 1]
    return memoryview(arr.buffers()[2])[offsets[0]: offsets[-1]]


def write(result: SynthResult, out: str | Path, conf: SynthConf) -> dict[str, Any]:
    """Write DIR/raw/part-*.{parquet,csv,jsonl} and DIR/truth/*.parquet; returns a summary."""
    out = Path(out)
    raw, truth_dir = out / "raw", out / "truth"
    # Replace a previous run's output, so rerunning with the same seed leaves the same files.
    for old in list(raw.glob("part-*")) + list(truth_dir.glob("*.parquet")):
        old.unlink()
    raw.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    fmt, ext = conf.format, EXT[conf.format]
    events = result.events
    tz_by_user = result.users["tz_offset_minutes"].to_numpy().astype(np.int64)
    n = events.num_rows
    bounds = np.linspace(0, n, conf.files + 1).round().astype(int)
    bad_log: list[pd.DataFrame] = []
    rows_written = 0
    chunk_no = 0
    for part in range(conf.files):
        path = raw / f"part-{part:05d}.{ext}"
        lo, hi = int(bounds[part]), int(bounds[part + 1])
        writer: Any = None
        sink = open(path, "wb") if fmt != "parquet" else None
        try:
            for c_lo in range(lo, max(hi, lo + 1), WRITE_CHUNK_ROWS):
                c_hi = min(c_lo + WRITE_CHUNK_ROWS, hi)
                chunk = events.slice(c_lo, c_hi - c_lo)
                rng = np.random.default_rng([conf.seed, 1000 + chunk_no])
                bad, src = _bad_rows_for_chunk(chunk, conf.bad_rows, fmt, rng,
                                               f"s{conf.seed}-bad{chunk_no}-")
                chunk_no += 1
                t = _interleave(chunk, bad, src)
                if bad is not None:
                    bad_log.append(pd.DataFrame({"event_id": bad["event_id"].to_numpy(zero_copy_only=False),
                                                 "kind": bad["_bad"].to_numpy(zero_copy_only=False),
                                                 "file": path.name}))
                rows_written += t.num_rows
                if fmt == "parquet":
                    typed = t.drop(["_bad"])
                    if writer is None:
                        # Unique ids and timestamps gain nothing from dictionaries; the rest do.
                        writer = pq.ParquetWriter(path, RAW_SCHEMA, use_dictionary=[
                            "user_id", "item_id", "event_type", "category"])
                    writer.write_table(typed.cast(RAW_SCHEMA))
                    continue
                owner = np.concatenate([result.event_user_index[c_lo:c_hi],
                                        result.event_user_index[c_lo:c_hi][src]])
                if bad is not None:
                    key = np.concatenate([np.arange(chunk.num_rows, dtype=float), src + 0.5])
                    owner = owner[np.argsort(key, kind="stable")]
                cols = _text_columns(t, fmt, tz_by_user[owner])
                if fmt == "csv":
                    table = pa.table([cols[c] for c in RAW_SCHEMA.names], names=RAW_SCHEMA.names)
                    if writer is None:
                        # Ids, numbers and ISO strings never hold a comma or a quote: no quoting.
                        sink.write((",".join(RAW_SCHEMA.names) + "\n").encode())
                        writer = pacsv.CSVWriter(sink, table.schema, write_options=pacsv.WriteOptions(
                            include_header=False, quoting_style="none"))
                    writer.write_table(table)
                else:
                    sink.write(_string_bytes(_json_lines(cols, t["_bad"].combine_chunks())))
        finally:
            if writer is not None:
                writer.close()
            if sink is not None:
                sink.close()
        log.info("wrote %s (%d events before bad rows)", path, hi - lo)

    bad_df = pd.concat(bad_log, ignore_index=True) if bad_log else pd.DataFrame(
        {"event_id": pd.Series(dtype=str), "kind": pd.Series(dtype=str), "file": pd.Series(dtype=str)})
    result.users.to_parquet(truth_dir / "users.parquet", index=False)
    result.items.to_parquet(truth_dir / "items.parquet", index=False)
    result.user_categories.to_parquet(truth_dir / "user_categories.parquet", index=False)
    bad_df.to_parquet(truth_dir / "bad_rows.parquet", index=False)
    meta = {**result.meta, "rows_written": rows_written, "bad_rows": len(bad_df), "format": fmt,
            "files": conf.files}
    (truth_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return {"out": str(out), "events": n, "bad_rows": len(bad_df), "rows_written": rows_written,
            "users": len(result.users), "files": conf.files, "format": fmt}


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

_CLI_KEYS = {"users": int, "items": int, "categories": int, "events_per_user": float, "days": int,
             "seed": int, "format": str, "files": int, "bad_rows": float, "start": str}


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: DIR/raw/part-* (raw logs) and DIR/truth/*.parquet (planted truth)")
    p.add_argument("--users", type=int, help="number of users (synth.users)")
    p.add_argument("--items", type=int, help="number of items (synth.items)")
    p.add_argument("--categories", type=int, help="number of item categories (synth.categories)")
    p.add_argument("--events-per-user", type=float, help="target mean events per user (synth.events_per_user)")
    p.add_argument("--days", type=int, help="length of the log window in days (synth.days)")
    p.add_argument("--start", help="window start, ISO-8601 (synth.start)")
    p.add_argument("--seed", type=int, help="random seed; same seed, same files (synth.seed)")
    p.add_argument("--format", choices=["parquet", "csv", "json"],
                   help="parquet and csv carry ts as epoch ms, json as ISO-8601 with an offset (synth.format)")
    p.add_argument("--files", type=int, help="number of part files, each a contiguous time range (synth.files)")
    p.add_argument("--bad-rows", type=float, metavar="F",
                   help="fraction of deliberately broken rows for the ingest quarantine, e.g. 0.01 (synth.bad_rows)")


def conf_from_args(base: SynthConf, args) -> SynthConf:
    given = {k: getattr(args, k) for k in _CLI_KEYS if getattr(args, k, None) is not None}
    return dataclasses.replace(base, **given)


def run(ctx, args) -> dict:
    conf = conf_from_args(ctx.cfg.synth, args)
    t0 = time.perf_counter()
    result = generate(conf)
    t_gen = time.perf_counter() - t0
    with step(log, f"writing {result.events.num_rows} events as {conf.format} to {args.out}"):
        summary = write(result, args.out, conf)
    total = time.perf_counter() - t0
    summary.update({
        "generate_s": round(t_gen, 2), "total_s": round(total, 2),
        "events_per_s": round(summary["events"] / total), "churned_fraction": round(result.meta["churned_fraction"], 3),
    })
    return summary


if __name__ == "__main__":  # pragma: no cover
    import sys

    from ebbtide.cli import main

    sys.exit(main(["synth", *sys.argv[1:]]))
