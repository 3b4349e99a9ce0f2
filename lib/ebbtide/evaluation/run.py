"""``ebbtide evaluate``: the challenger against every baseline (and the champion), then the gate.

Reads ``gold_training_examples`` (and ``gold_item_vocab`` for the catalogue size), applies the
protocol, collects the evaluation split to the driver in two views (numpy; the rows and one
churn snapshot row per user must fit in driver memory: ``evaluate.max_examples`` caps each
view, above it a seeded uniform sample is evaluated), fits the baselines on Spark aggregates
of the train split (per item, (user, item) presence and distinct return gap; no train row is collected),
ranks the candidate catalogue for every scorer in chunks, writes ``ops_evaluations``, logs the
same to MLflow with the report, and applies the promotion gate on the nightly view.

Views (protocols.py): *nightly*, the headline, ranks each (user, test day) from the window
before that midnight against the set of items of the user's day; *request_time* ranks each
test event's item as of that event's time. Within a view every scorer gets the same rows and
elapsed times, and every scorer ranks the same candidates (the items seen in the train
split): ``rank_scorer`` is the one place that masks the rest.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any, Optional

import numpy as np

from ebbtide import catalog, mlflow_uris, storage, tables
from ebbtide.log import get_logger, step

log = get_logger("evaluate")

# ops_evaluations: columns, comments and MERGE keys are in ebbtide.catalog.
OPS_SPEC = catalog.OPS_EVALUATIONS
OPS_TABLE = OPS_SPEC.name
OPS_KEYS = OPS_SPEC.keys
EXAMPLE_COLUMNS = (
    "example_id", "user_id", "item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start",
    "length", "last_ts", "target_item", "target_ts", "time_to_next_s",
)
NIGHTLY_COLUMNS = (
    "example_id", "user_id", "day", "item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start",
    "length", "last_ts", "target_items", "elapsed_s",
)
# The headline view first: the gate, the summary's top-level keys and the report lead with it.
from ebbtide.model.prior import VIEWS  # noqa: E402  (one list of views: the prior is chosen per view)
# Churn ROC-AUC again over the users active in the week before the cut only: over everyone,
# long-idle users are easy negatives and recency alone wins most of the AUC.
RECENT_DAYS = 7


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-uri", help="model to evaluate (default: evaluate.model_uri, models:/ebbtide@challenger)")
    p.add_argument("--split", choices=["valid", "test"], help="examples to evaluate on (default: evaluate.split)")
    p.add_argument("--protocol", choices=["temporal", "leave-last-out"], help="default: evaluate.protocol")
    p.add_argument("--baselines-only", action="store_true",
                   help="evaluate the baselines alone (no model needed); no gate")
    p.add_argument("--models-only", action="store_true",
                   help="rank the model(s) alone: no baseline is fitted or ranked (the train split yields only "
                        "the popularity counts the models' priors read); no gate, which judges against baselines. "
                        "For a variant whose baselines another evaluation of the same split already reports")
    p.add_argument("--no-champion", action="store_true", help="do not score the current champion alongside")
    p.add_argument("--no-promote", action="store_true",
                   help="compute and log the gate's decision but move no alias")


# ---------------------------------------------------------------------------------------
# Scoring loops (numpy in -> metrics out)
# ---------------------------------------------------------------------------------------


def _pad_columns(scores: np.ndarray, n_items: int) -> np.ndarray:
    """A model trained on an older vocabulary scores fewer items: the new ones get -inf."""
    if scores.shape[1] == n_items:
        return scores
    if scores.shape[1] > n_items:
        return scores[:, :n_items]
    pad = np.full((scores.shape[0], n_items - scores.shape[1]), -np.inf, dtype=scores.dtype)
    return np.concatenate([scores, pad], axis=1)


def rank_scorer(scorer, batch, elapsed_s, targets, n_items, ks, candidates=None, negatives=None,
                exclude_history=False, chunk_size=1024, quiet=False) -> dict[str, float]:
    """One scorer's ranking metrics on one view. ``targets`` is (n,) one item per row, or (n, W)
    target sets padded with -1 (the nightly view). The exclusions (pad/OOV, items outside the
    bool ``candidates`` vector, the window when ``exclude_history``) are applied here to every
    scorer's scores alike, so the full and the sampled ranking see the same candidates."""
    from ebbtide.evaluation.metrics import RankingAccumulator, SampledAccumulator, SetRankingAccumulator, exclusion_mask

    sets = targets.ndim == 2
    acc = (SetRankingAccumulator if sets else RankingAccumulator)(n_items, ks)
    sacc = SampledAccumulator(ks)
    n = len(targets)
    t0 = time.perf_counter()
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        part = {k: v[a:b] for k, v in batch.items()}
        s = _pad_columns(np.asarray(scorer.score_all(part, elapsed_s[a:b]), dtype=np.float32), n_items)
        excl = exclusion_mask(b - a, n_items, history=part["item_idx"] if exclude_history else None, candidates=candidates)
        s = np.where(excl.numpy(), np.float32(-np.inf), s)
        t = targets[a:b]
        if sets:  # padding is on the right: trim the chunk to its own largest set
            t = t[:, : max(int((t >= 0).sum(1).max(initial=0)), 1)]
        acc.update(s, t)
        if negatives is not None and not sets:
            sacc.update(s, t, negatives[a:b])
    res = acc.result()
    res.update(sacc.result())
    (log.debug if quiet else log.info)("%s: ranked %d %s x %d items in %.1f s (ndcg@10 %.4f)", scorer.name, n, "target sets" if sets else "examples",
             n_items, time.perf_counter() - t0, res.get("ndcg@10", float("nan")))
    return res


class _HeadOnly:
    """A model scorer's churn figures before its calibration (the ``*_raw`` keys)."""

    def __init__(self, scorer):
        self.scorer, self.name = scorer, f"{scorer.name}_head"

    def has_head(self, batch, elapsed_s) -> bool:
        return any(k.endswith("_raw") for k in self.scorer.churn(batch, elapsed_s))

    def churn(self, batch, elapsed_s):
        p = self.scorer.churn(batch, elapsed_s)
        return {k[: -len("_raw")]: v for k, v in p.items() if k.endswith("_raw")}


def churn_scorer_metrics(scorer, batch, elapsed_s, labels: dict[int, np.ndarray], returned, return_after_s, n_bins,
                         recent: Optional[np.ndarray] = None):
    """Churn metrics per horizon; with the bool ``recent`` (users active within RECENT_DAYS of the
    cut) also ``churn_{d}d_recent_roc_auc`` on those users alone."""
    from ebbtide.evaluation.metrics import calibration_curve, churn_metrics, concordance_index, roc_auc

    p = scorer.churn(batch, elapsed_s)
    out: dict[str, float] = {}
    curves = {}
    for d, y in labels.items():
        key = f"p_return_{d}d"
        if key not in p:
            continue
        out.update(churn_metrics(y, p[key], n_bins, prefix=f"churn_{d}d_"))
        if recent is not None:
            out[f"churn_{d}d_recent_roc_auc"] = roc_auc(np.asarray(y)[recent], np.asarray(p[key])[recent])
        curves[d] = calibration_curve(y, p[key], n_bins)
    longest = max((d for d in labels if f"p_return_{d}d" in p), default=None)
    if longest is not None:
        # Higher probability of an early return = shorter expected time to return.
        out["return_cindex"] = concordance_index(return_after_s, returned, p[f"p_return_{longest}d"])
    return out, curves


# ---------------------------------------------------------------------------------------
# Rows for ops_evaluations
# ---------------------------------------------------------------------------------------


def metric_rows(name: str, role: str, version: str, uri: str, metrics: dict[str, float], common: dict[str, Any]) -> list[dict]:
    """``ndcg@10`` -> metric ndcg, k 10; churn ``churn_7d_roc_auc`` -> metric churn_roc_auc, k 7
    (the horizon in days), ``churn_7d_recent_roc_auc`` -> churn_recent_roc_auc, k 7; others keep
    k null."""
    import re

    rows = []
    for key, v in metrics.items():
        if key == "n_examples":
            continue
        m = re.fullmatch(r"(.+)@(\d+)", key)
        c = re.fullmatch(r"churn_(\d+)d_(.+)", key)
        if m:
            metric, k = m.group(1), int(m.group(2))
        elif c:
            metric, k = f"churn_{c.group(2)}", int(c.group(1))
        else:
            metric, k = key, None
        rows.append({**common, "model_name": name, "model_role": role, "model_version": version,
                     "model_uri": uri, "metric": metric, "k": k,
                     "value": float(v) if v is not None and np.isfinite(v) else None})
    return rows


def _ops_df(spark, rows: list[dict]):
    """ops_evaluations rows (column comments in the schema)."""
    names = OPS_SPEC.names
    return spark.createDataFrame([tuple(r.get(n) for n in names) for r in rows], OPS_SPEC.spark_schema())


# ---------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------


def _n_items(spark, cfg, ex) -> int:
    from pyspark.sql import functions as F

    if tables.exists(spark, cfg, "gold_item_vocab"):
        v = tables.read(spark, cfg, "gold_item_vocab").agg(F.max("item_index")).collect()[0][0]
        if v is not None:
            return int(v) + 1
    row = ex.agg(F.max("target_item"), F.max(F.array_max("item_idx"))).collect()[0]
    return int(max(row[0] or 1, row[1] or 1)) + 1


def cutoffs_of(spark, cfg, ex) -> dict[str, float]:
    """T1 / T2 in epoch seconds: the ones the sequences stage recorded on the table, else the
    first target time of the valid / test split (no event lies between the two)."""
    from ebbtide.evaluation import protocols as P

    try:
        from ebbtide.sequences import read_cutoffs

        c = read_cutoffs(spark, cfg)
        return {"valid_start": c["valid_start"].timestamp(), "test_start": c["test_start"].timestamp()}
    except (ImportError, KeyError, ValueError):
        return {"valid_start": P.split_start(ex, "valid"), "test_start": P.split_start(ex, "test")}


def _load_predictor(uri: str, uris: Optional[mlflow_uris.MlflowUris] = None):
    try:
        from ebbtide.model.predictor import Predictor
    except ImportError as e:
        raise ValueError(
            f"cannot import ebbtide.model.predictor ({e}); run with --baselines-only to evaluate the baselines alone"
        ) from None
    try:
        return Predictor.load(uri, uris)
    except Exception as e:  # noqa: BLE001 - any load failure is reported with the fix
        raise ValueError(
            f"cannot load the model {uri}: {type(e).__name__}: {e}. Train and register it (`ebbtide train`), "
            "pass another --model-uri, or use --baselines-only"
        ) from None


def _collect(rows, ec, what: str, cap: Optional[int] = None):
    """One view's rows to the driver (pandas, ordered by example_id), a seeded sample above
    ``evaluate.max_examples`` (or above ``cap`` where the caller holds fewer rows)."""
    n_total = rows.count()
    limit = ec.max_examples if cap is None else min(ec.max_examples, int(cap))
    if n_total > limit:
        log.log(logging.WARNING if limit == ec.max_examples else logging.INFO,
                "%d %s exceed %d: a seeded sample (evaluate.max_examples %d)", n_total, what, limit, ec.max_examples)
        rows = rows.sample(fraction=limit / n_total, seed=ec.sampled_seed)
    return rows.orderBy("example_id").toPandas()


def nightly_view(rows, ec, cap: Optional[int] = None) -> Optional[dict[str, Any]]:
    """The nightly view of a split's evaluation rows (``protocols.evaluation_rows``), collected:
    ``pdf``, the numpy ``batch``, ``targets`` (sets padded with -1) and ``elapsed`` (to each
    midnight); None when no (user, day) has a window before its midnight. Evaluation ranks it, and
    training chooses the popularity prior on it (``ebbtide.model.prior.fit``)."""
    from ebbtide.evaluation import protocols as P
    from ebbtide.evaluation.metrics import pad_targets

    npdf = _collect(P.nightly_examples(rows).select(*NIGHTLY_COLUMNS), ec, "nightly rows", cap)
    if npdf.empty:
        return None
    return {"pdf": npdf, "batch": P.to_batch(npdf), "targets": pad_targets(npdf["target_items"]),
            "elapsed": npdf["elapsed_s"].to_numpy().astype(np.float64)}


def by_metric(by_scorer: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """scorer -> metric -> value  ->  metric -> scorer -> value (the summary's shape)."""
    out: dict[str, dict[str, float]] = {}
    for name, met in by_scorer.items():
        for key, v in met.items():
            out.setdefault(key, {})[name] = v
    return out


def run(ctx, args) -> dict:
    from ebbtide.evaluation import baselines as B
    from ebbtide.evaluation import gate, protocols as P, report
    from ebbtide.evaluation.metrics import candidate_mask, load_negatives, sample_negatives, save_negatives
    from ebbtide.model import prior

    cfg, spark = ctx.cfg, ctx.spark
    ec = cfg.section("evaluate")
    if args.baselines_only and args.models_only:
        raise ValueError("--baselines-only and --models-only exclude each other: pass one")
    with_baselines = not args.models_only
    split = args.split or ec.split
    protocol = args.protocol or ec.protocol
    model_uri = args.model_uri or ec.model_uri
    ks = tuple(ec.ks)
    horizons = tuple(int(d) for d in ec.churn_horizons_days)
    report_url = storage.join(cfg.path(ec.report_dir), f"{split}-{protocol}")
    # The report and its figures are written to a local folder; a report_dir on an object store
    # gets a copy of it at the end (storage.publish_dir).
    out_dir = storage.local_dir_for(report_url)
    # Files Python writes on the warehouse's store (sampled negatives, the report) find it with
    # the session's s3a settings, as Spark does.
    opts = storage.options_from_spark(spark)

    # -- the model(s) first: a model that cannot load fails before any Spark work ---------
    uris = mlflow_uris.from_config(cfg)
    client = mlflow_uris.client(uris)
    challenger = champion = None
    model_scorers: list[tuple[Any, str, str, str]] = []  # scorer, role, version, uri
    if not args.baselines_only:
        challenger = gate.resolve_registered(client, model_uri)
        model_scorers.append((B.PredictorScorer(_load_predictor(model_uri, uris), "ebbtide"), "challenger",
                              challenger["version"] if challenger else "", model_uri))
        if challenger and not args.no_champion:
            champ_version = gate.alias_version(client, challenger["name"], ec.champion_alias)
            if champ_version and champ_version != challenger["version"]:
                champ_uri = f"models:/{challenger['name']}/{champ_version}"
                champion = {"name": challenger["name"], "version": champ_version, "uri": champ_uri}
                model_scorers.append((B.PredictorScorer(_load_predictor(champ_uri, uris), "champion"), "champion",
                                      champ_version, champ_uri))

    ex = tables.read(spark, cfg, "gold_training_examples")
    ex_version = tables.version(spark, cfg, "gold_training_examples")
    n_items = _n_items(spark, cfg, ex)
    df = P.apply_protocol(ex, protocol)

    # -- the candidate catalogue: what any scorer could have learned from the train split ----
    with step(log, "candidate catalogue"):
        candidates = candidate_mask(P.candidate_items(df).toPandas()["item"].to_numpy(), n_items)
        n_candidates = int(candidates.sum())
        log.info("%d of %d catalogue items seen in the train split are ranked; the rest are misses for every scorer",
                 n_candidates, n_items - 2)

    # -- evaluation views: (batch, elapsed, targets) per view -----------------------------
    views: dict[str, dict[str, Any]] = {}
    with step(log, f"collecting the {split} examples ({protocol})"):
        rows = P.evaluation_rows(df, split)
        pdf = _collect(rows.select(*EXAMPLE_COLUMNS), ec, "examples")
        if pdf.empty:
            raise ValueError(f"no uncensored '{split}' examples in gold_training_examples; check sequences.split")
        views["request_time"] = {"pdf": pdf, "batch": P.to_batch(pdf),
                                 "targets": pdf["target_item"].to_numpy().astype(np.int64),
                                 "elapsed": pdf["time_to_next_s"].to_numpy().astype(np.float64)}
        nightly = nightly_view(rows, ec)
        if nightly is None:
            log.warning("no (user, day) of the %s split has a window before its midnight: nightly view skipped", split)
        else:
            views["nightly"] = nightly
        views = {v: views[v] for v in VIEWS if v in views}
        n_rows = {v: len(d["targets"]) for v, d in views.items()}
        log.info("rows per view %s, %d items in the catalogue", n_rows, n_items)

    with step(log, "sampled negatives (request-time view)"):
        rt = views["request_time"]
        neg_path = storage.join(cfg.path("{root}/evaluation"), f"negatives-{split}-{protocol}-{ec.sampled_seed}.npz")
        ids = rt["pdf"]["example_id"].tolist()
        negatives = load_negatives(neg_path, ids, opts)
        if negatives is not None and not candidates[negatives].all():
            negatives = None  # drawn for another candidate catalogue: draw again
        longest = int(max((np.count_nonzero(np.unique(w) >= 2) for w in rt["batch"]["item_idx"]), default=0)) + 1
        if negatives is None and n_candidates - longest < ec.sampled_negatives:
            log.warning("%d candidate items too few for %d sampled negatives per example: sampled metrics skipped",
                        n_candidates, ec.sampled_negatives)
        elif negatives is None:
            # A user's positives: every item of the input window and the target.
            pos = [np.append(w[w >= 2], t) for w, t in zip(rt["batch"]["item_idx"], rt["targets"])]
            negatives = sample_negatives(pos, n_items, ec.sampled_negatives, ec.sampled_seed, candidates=candidates)
            save_negatives(neg_path, negatives, ids, opts)
        rt["negatives"] = negatives

    # -- baselines: fit on the train split only ------------------------------------------
    # Aggregated in Spark (per item, (user, item) presence, distinct return gap): no train row reaches
    # the driver. --models-only skips the baselines and the item pairs (the ablation of a results run).
    with step(log, "fitting baselines on the train split" if with_baselines else "the train split's popularity (models only)"):
        item_scorers = (B.item_baselines(n_items, ec.popularity_half_life_days, ec.cooccurrence_half_life_days)
                        if with_baselines else [])
        # The models' popularity priors are the train split's recent popularity too (ebbtide.model.prior),
        # each view at the half-life chosen for it.
        prior_h = {(sc.name, v): prior.half_life_s(getattr(sc.predictor, "meta", None), v)
                   for sc, *_ in model_scorers for v in prior.VIEWS}
        half_lives = [b.h for b in item_scorers if isinstance(b, B.RecentPopular)] + [h for h in prior_h.values() if h]
        agg = B.TrainAggregates.from_spark(P.training_rows(df), n_items, sorted(set(half_lives)), pairs=with_baselines)
        if agg.n_rows == 0:
            raise ValueError("the train split is empty; nothing to fit baselines on")
        item_scorers = [b.fit(agg) for b in item_scorers]
        for sc, *_ in model_scorers:
            sc.log_p = {v: prior.log_prior(agg.decayed[prior_h[sc.name, v]], n_items)
                        for v in prior.VIEWS if prior_h[sc.name, v]}
            for v in sc.log_p:
                log.info("%s ranks the %s view with its popularity prior: %s", sc.name, v,
                         {k: x for k, x in prior.chosen(sc.predictor.meta, v).items() if k != "grid"})

    # -- churn snapshots: evaluation as of the split's cut, fit inside the train period ---
    with step(log, "churn snapshots"):
        cuts = cutoffs_of(spark, cfg, ex)
        t1 = cuts["valid_start"]
        cut = t1 if split == "valid" else cuts["test_start"]
        snap_cols = [*P.ARRAY_FEATURES, "length", "last_ts", "user_id", "elapsed_s", "returned", "return_after_s"]
        snap = P.churn_snapshot(ex, cut).select(*snap_cols).orderBy("user_id").toPandas()
        if with_baselines:  # what the churn baselines fit on
            fit_cut = t1 - max(horizons) * P.DAY_S
            fit = P.churn_snapshot(ex, fit_cut, observe_until_s=t1).select(*snap_cols).toPandas()
            at_t1 = P.value_counts(P.churn_snapshot(ex, t1, observe_until_s=t1), "elapsed_s").toPandas()
    churn_scorers = []
    if with_baselines and len(snap) and len(fit):
        fb = P.to_batch(fit)
        fe = fit["elapsed_s"].to_numpy()
        flab = {d: P.churn_labels(fit["returned"].to_numpy(), fit["return_after_s"].to_numpy(), d) for d in horizons}
        # Return gaps seen in train, plus every window still open at T1 (censored there), each
        # distinct value once with its count.
        dur = np.concatenate([agg.gap_s, at_t1["elapsed_s"].to_numpy(dtype=np.float64)])
        obs = np.concatenate([np.ones(len(agg.gap_s)), np.zeros(len(at_t1))])
        cnt = np.concatenate([agg.gap_n, at_t1["n"].to_numpy(dtype=np.int64)])
        churn_scorers = [
            B.DaysSinceLast(horizons).fit(fb, fe, flab),
            B.RFMLogistic(horizons).fit(fb, fe, flab),
            B.KaplanMeierChurn(horizons).fit(dur, obs, cnt),
            B.ExponentialDecay(horizons).fit(dur, obs, cnt),
        ]
    else:
        log.warning("no churn snapshot rows around the cut dates: churn metrics skipped")

    # -- ranking: every scorer on every view, same rows, elapsed times and candidates ---------
    ranking: dict[str, dict[str, dict[str, float]]] = {v: {} for v in VIEWS}
    roles: dict[str, tuple[str, str, str]] = {}
    scorers = [(sc, (role, ver, uri)) for sc, role, ver, uri in model_scorers] + [(sc, ("baseline", "", "")) for sc in item_scorers]
    with step(log, f"candidate ranking, {len(scorers)} scorers x views {', '.join(views)}"):
        for sc, role in scorers:
            roles[sc.name] = role
            for v, d in views.items():
                ranking[v][sc.name] = rank_scorer(sc.in_view(v) if hasattr(sc, "in_view") else sc,
                                                  d["batch"], d["elapsed"], d["targets"], n_items, ks, candidates,
                                                  d.get("negatives"), ec.exclude_history, ec.chunk_size)
    headline = ranking[VIEWS[0]]

    churn: dict[str, dict[str, float]] = {}
    curves: dict[str, Any] = {}
    if churn_scorers or (not with_baselines and len(snap)):
        with step(log, f"churn metrics on {len(snap)} users as of the {split} cut"):
            sb = P.to_batch(snap)
            se = snap["elapsed_s"].to_numpy()
            ret = snap["returned"].to_numpy()
            after = snap["return_after_s"].to_numpy()
            labels = {d: P.churn_labels(ret, after, d) for d in horizons}
            recent = se <= RECENT_DAYS * P.DAY_S
            for sc in [s for s, *_ in model_scorers] + churn_scorers:
                churn[sc.name], curves[sc.name] = churn_scorer_metrics(sc, sb, se, labels, ret, after, ec.calibration_bins, recent)
                roles.setdefault(sc.name, ("baseline", "", ""))
            for sc, role, *_ in model_scorers:
                # A calibrated model also reports its return-time head alone, so the report shows
                # what the calibration adds.
                head = _HeadOnly(sc)
                if head.has_head({k: v[:1] for k, v in sb.items()}, se[:1]):
                    churn[head.name], _ = churn_scorer_metrics(head, sb, se, labels, ret, after, ec.calibration_bins, recent)
                    roles[head.name] = ("diagnostic", "", "")

    # -- report -----------------------------------------------------------------------------
    figures = {}
    if curves:
        d0 = min(horizons)
        report.calibration_plot({k: v[d0] for k, v in curves.items() if d0 in v},
                                os.path.join(out_dir, "calibration.png"), f"return within {d0} days")
        figures[f"Calibration, return within {d0} days"] = "calibration.png"
        pick = np.linspace(0, len(snap) - 1, num=min(3, len(snap))).astype(int)
        few = {k: v[pick] for k, v in P.to_batch(snap).items()}
        fns = {s.name: s.churn for s in [s for s, *_ in model_scorers] + churn_scorers}
        report.decay_plot(fns, few, [str(snap["user_id"].iloc[i]) for i in pick],
                          os.path.join(out_dir, "decay_curves.png"), key=f"p_return_{d0}d")
        figures["Decay curves of a few users"] = "decay_curves.png"

    # -- gate: on the headline (nightly) view --------------------------------------------------
    decision = None
    metric = ec.primary_metric
    if model_scorers and challenger and with_baselines:
        champ_val = headline.get("champion", {}).get(metric) if champion else None
        if champion is None and gate.alias_version(client, challenger["name"], ec.champion_alias) == challenger["version"]:
            champ_val = headline.get("ebbtide", {}).get(metric)  # already the champion: it must still beat baselines
        decision = gate.decide(
            metric, headline.get("ebbtide", {}).get(metric), champ_val,
            {k: v.get(metric) for k, v in headline.items() if roles[k][0] == "baseline"},
            ec.tolerance, ec.baseline_margin, ec.require_beat_baselines,
        )
    header = {"run": ctx.run_id, "split": split, "protocol": protocol,
              **{f"{v.replace('_', '-')} rows": n for v, n in n_rows.items()},
              "items": n_items - 2, "candidates (seen in train)": n_candidates,
              "gold_training_examples version": ex_version, "model": model_uri if model_scorers else "(baselines only)"}
    report_path = report.write_report(out_dir, header, ranking, churn, decision.as_dict() if decision else None, figures)

    # -- MLflow, then the gate's alias move (logged on the evaluation run) ------------------
    # One dict per scorer: the headline view's metrics under their plain names (so
    # ``{scorer}.ndcg_at_10`` and the training run's ``test_ndcg_at_10`` keep their meaning), the
    # other views' prefixed with the view, and churn.
    exp_id = mlflow_uris.ensure_experiment(client, cfg)
    all_metrics: dict[str, dict[str, float]] = {}
    for v, by_scorer in ranking.items():
        for name, met in by_scorer.items():
            pre = "" if v == VIEWS[0] else f"{v}_"
            all_metrics.setdefault(name, {}).update({f"{pre}{k}": x for k, x in met.items()})
    for k, v in churn.items():
        all_metrics.setdefault(k, {}).update(v)
    mlflow_run = gate.log_evaluation(
        client, exp_id, f"evaluate-{split}-{protocol}-{ctx.run_id}", all_metrics,
        {"split": split, "protocol": protocol, "model_uri": model_uri, "examples_version": ex_version,
         **{f"n_{v}": n for v, n in n_rows.items()}, "n_items": n_items, "n_candidates": n_candidates,
         "exclude_history": ec.exclude_history},
        out_dir, model_run_id=(challenger or {}).get("run_id") or None, model_key="ebbtide", split=split,
    )
    if not storage.is_local(report_url):
        storage.publish_dir(out_dir, report_url, opts)
        report_path = storage.join(report_url, os.path.basename(report_path))
    gate_result = None
    if decision is not None:
        gate_result = gate.apply_decision(client, challenger["name"], challenger["version"], decision,
                                          ec.champion_alias, run_id=mlflow_run, promote=ec.promote and not args.no_promote)

    # -- ops_evaluations: the view goes into the protocol key ("temporal/nightly") --------------
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    common = {"run_id": ctx.run_id, "evaluated_at": now, "examples_version": int(ex_version), "split": split,
              "mlflow_run_id": mlflow_run}
    rows_out = []
    for v, by_scorer in ranking.items():
        for name, met in by_scorer.items():
            rows_out += [dict(r, n_examples=n_rows[v])
                         for r in metric_rows(name, *roles[name], met, dict(common, protocol=f"{protocol}/{v}"))]
    # Churn is scored as of the cut date, the way the nightly job scores: it belongs to that view.
    for name, met in churn.items():
        rows_out += [dict(r, n_examples=len(snap))
                     for r in metric_rows(name, *roles[name], met, dict(common, protocol=f"{protocol}/nightly"))]
    tables.write(_ops_df(spark, rows_out), cfg, OPS_TABLE, "merge", keys=OPS_KEYS, update_matched=True,
                 comment=OPS_SPEC.comment)

    primary = {k: v.get(metric) for k, v in headline.items()}
    log.info("%s %s by scorer: %s", VIEWS[0], metric,
             ", ".join(f"{k} {v:.4f}" for k, v in primary.items() if v is not None))
    views_out = {v: by_metric(ranking[v]) for v in VIEWS}
    head = views_out[VIEWS[0]]
    churn_keys = {}
    for d in horizons:
        churn_keys[f"churn_roc_auc_{d}d"] = {k: v.get(f"churn_{d}d_roc_auc") for k, v in churn.items()}
        churn_keys[f"churn_roc_auc_{d}d_recent"] = {k: v.get(f"churn_{d}d_recent_roc_auc") for k, v in churn.items()}
    return {
        "split": split, "protocol": protocol, "examples": n_rows.get(VIEWS[0], 0), "examples_by_view": n_rows,
        "items": n_items - 2, "candidates": n_candidates,
        # Top-level ranking keys are the headline (nightly) view, as the gate judges it.
        "ndcg@10": head.get("ndcg@10", {}), "recall@10": head.get("recall@10", {}), "mrr@10": head.get("mrr@10", {}),
        metric: primary,
        **churn_keys,
        **views_out,
        "report": report_path, "mlflow_run_id": mlflow_run, "rows": len(rows_out),
        "gate": gate_result and {k: gate_result[k] for k in ("promoted", "summary", "champion_after")},
    }
