"""``ebbtide evaluate``: the challenger against every baseline (and the champion), then the gate.

Reads ``gold_training_examples`` (and ``gold_item_vocab`` for the catalogue size), applies the
protocol, collects the evaluation split to the driver (numpy; the examples and one churn
snapshot row per user must fit in driver memory: ``evaluate.max_examples`` caps the examples,
above it a seeded uniform sample is evaluated), fits the baselines on the train split, ranks
the full catalogue for every scorer in chunks, writes ``ops_evaluations``, logs the same to
MLflow with the report, and applies the promotion gate.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Optional

import numpy as np

from ebbtide import tables
from ebbtide.log import get_logger, step

log = get_logger("evaluate")

OPS_TABLE = "ops_evaluations"
OPS_KEYS = ("model_name", "model_version", "examples_version", "split", "protocol", "metric", "k")
EXAMPLE_COLUMNS = (
    "example_id", "user_id", "item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start",
    "length", "last_ts", "target_item", "target_ts", "time_to_next_s",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-uri", help="model to evaluate (default: evaluate.model_uri, models:/ebbtide@challenger)")
    p.add_argument("--split", choices=["valid", "test"], help="examples to evaluate on (default: evaluate.split)")
    p.add_argument("--protocol", choices=["temporal", "leave-last-out"], help="default: evaluate.protocol")
    p.add_argument("--baselines-only", action="store_true",
                   help="evaluate the baselines alone (no model needed); no gate")
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


def rank_scorer(scorer, batch, elapsed_s, targets, n_items, ks, negatives, exclude_history, chunk_size) -> dict[str, float]:
    from ebbtide.evaluation.metrics import RankingAccumulator, SampledAccumulator, exclusion_mask

    acc = RankingAccumulator(n_items, ks)
    sacc = SampledAccumulator(ks)
    n = len(targets)
    t0 = time.perf_counter()
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        part = {k: v[a:b] for k, v in batch.items()}
        s = _pad_columns(np.asarray(scorer.score_all(part, elapsed_s[a:b]), dtype=np.float32), n_items)
        excl = exclusion_mask(b - a, n_items, history=part["item_idx"]) if exclude_history else None
        acc.update(s, targets[a:b], excl)
        if negatives is not None:
            sacc.update(s, targets[a:b], negatives[a:b])
    res = acc.result()
    res.update(sacc.result())
    log.info("%s: ranked %d examples x %d items in %.1f s (ndcg@10 %.4f)", scorer.name, n, n_items,
             time.perf_counter() - t0, res.get("ndcg@10", float("nan")))
    return res


def churn_scorer_metrics(scorer, batch, elapsed_s, labels: dict[int, np.ndarray], returned, return_after_s, n_bins):
    from ebbtide.evaluation.metrics import calibration_curve, churn_metrics, concordance_index

    p = scorer.churn(batch, elapsed_s)
    out: dict[str, float] = {}
    curves = {}
    for d, y in labels.items():
        key = f"p_return_{d}d"
        if key not in p:
            continue
        out.update(churn_metrics(y, p[key], n_bins, prefix=f"churn_{d}d_"))
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
    (the horizon in days); others keep k null."""
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
    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("run_id", T.StringType()),
        T.StructField("evaluated_at", T.TimestampType()),
        T.StructField("model_name", T.StringType()),
        T.StructField("model_role", T.StringType()),
        T.StructField("model_version", T.StringType()),
        T.StructField("model_uri", T.StringType()),
        T.StructField("examples_version", T.LongType()),
        T.StructField("split", T.StringType()),
        T.StructField("protocol", T.StringType()),
        T.StructField("metric", T.StringType()),
        T.StructField("k", T.IntegerType()),
        T.StructField("value", T.DoubleType()),
        T.StructField("n_examples", T.LongType()),
        T.StructField("mlflow_run_id", T.StringType()),
    ])
    names = [f.name for f in schema.fields]
    return spark.createDataFrame([tuple(r.get(n) for n in names) for r in rows], schema)


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


def _cutoffs(spark, cfg, ex) -> dict[str, float]:
    """T1 / T2 in epoch seconds: the ones the sequences stage recorded on the table, else the
    first target time of the valid / test split (no event lies between the two)."""
    from ebbtide.evaluation import protocols as P

    try:
        from ebbtide.sequences import read_cutoffs

        c = read_cutoffs(spark, cfg)
        return {"valid_start": c["valid_start"].timestamp(), "test_start": c["test_start"].timestamp()}
    except (ImportError, KeyError, ValueError):
        return {"valid_start": P.split_start(ex, "valid"), "test_start": P.split_start(ex, "test")}


def _load_predictor(uri: str, tracking_uri: Optional[str] = None):
    try:
        from ebbtide.model.predictor import Predictor
    except ImportError as e:
        raise ValueError(
            f"cannot import ebbtide.model.predictor ({e}); run with --baselines-only to evaluate the baselines alone"
        ) from None
    try:
        return Predictor.load(uri, tracking_uri=tracking_uri)
    except Exception as e:  # noqa: BLE001 - any load failure is reported with the fix
        raise ValueError(
            f"cannot load the model {uri}: {type(e).__name__}: {e}. Train and register it (`ebbtide train`), "
            "pass another --model-uri, or use --baselines-only"
        ) from None


def run(ctx, args) -> dict:
    from ebbtide.evaluation import baselines as B
    from ebbtide.evaluation import gate, protocols as P, report
    from ebbtide.evaluation.metrics import load_negatives, sample_negatives, save_negatives

    cfg, spark = ctx.cfg, ctx.spark
    ec = cfg.section("evaluate")
    split = args.split or ec.split
    protocol = args.protocol or ec.protocol
    model_uri = args.model_uri or ec.model_uri
    ks = tuple(ec.ks)
    horizons = tuple(int(d) for d in ec.churn_horizons_days)
    out_dir = os.path.join(cfg.path(ec.report_dir), f"{split}-{protocol}")
    os.makedirs(out_dir, exist_ok=True)

    # -- the model(s) first: a model that cannot load fails before any Spark work ---------
    client = gate.mlflow_client(cfg)
    tracking = cfg.path(cfg.section("mlflow").tracking_uri)
    challenger = champion = None
    model_scorers: list[tuple[Any, str, str, str]] = []  # scorer, role, version, uri
    if not args.baselines_only:
        challenger = gate.resolve_registered(client, model_uri)
        model_scorers.append((B.PredictorScorer(_load_predictor(model_uri, tracking), "ebbtide"), "challenger",
                              challenger["version"] if challenger else "", model_uri))
        if challenger and not args.no_champion:
            champ_version = gate.alias_version(client, challenger["name"], ec.champion_alias)
            if champ_version and champ_version != challenger["version"]:
                champ_uri = f"models:/{challenger['name']}/{champ_version}"
                champion = {"name": challenger["name"], "version": champ_version, "uri": champ_uri}
                model_scorers.append((B.PredictorScorer(_load_predictor(champ_uri, tracking), "champion"), "champion",
                                      champ_version, champ_uri))

    ex = tables.read(spark, cfg, "gold_training_examples")
    ex_version = tables.version(spark, cfg, "gold_training_examples")
    n_items = _n_items(spark, cfg, ex)
    df = P.apply_protocol(ex, protocol)

    # -- evaluation examples -------------------------------------------------------------
    with step(log, f"collecting the {split} examples ({protocol})"):
        ev = P.evaluation_rows(df, split).select(*EXAMPLE_COLUMNS)
        n_total = ev.count()
        if n_total == 0:
            raise ValueError(f"no uncensored '{split}' examples in gold_training_examples; check sequences.split")
        if n_total > ec.max_examples:
            log.warning("%d examples exceed evaluate.max_examples=%d: evaluating a seeded sample", n_total, ec.max_examples)
            ev = ev.sample(fraction=ec.max_examples / n_total, seed=ec.sampled_seed)
        pdf = ev.orderBy("example_id").toPandas()
        batch = P.to_batch(pdf)
        targets = pdf["target_item"].to_numpy().astype(np.int64)
        elapsed = pdf["time_to_next_s"].to_numpy().astype(np.float64)
        log.info("%d examples, %d items in the catalogue", len(targets), n_items)

    with step(log, "sampled negatives"):
        neg_path = os.path.join(cfg.path("{root}/evaluation"), f"negatives-{split}-{protocol}-{ec.sampled_seed}.npz")
        os.makedirs(os.path.dirname(neg_path), exist_ok=True)
        ids = pdf["example_id"].tolist()
        negatives = load_negatives(neg_path, ids)
        longest = int(max((np.count_nonzero(np.unique(w) >= 2) for w in batch["item_idx"]), default=0)) + 1
        if negatives is None and n_items - 2 - longest < ec.sampled_negatives:
            log.warning("catalogue of %d items too small for %d sampled negatives per example: sampled metrics skipped",
                        n_items - 2, ec.sampled_negatives)
        elif negatives is None:
            # A user's positives: every item of the input window and the target.
            pos = [np.append(w[w >= 2], t) for w, t in zip(batch["item_idx"], targets)]
            negatives = sample_negatives(pos, n_items, ec.sampled_negatives, ec.sampled_seed)
            save_negatives(neg_path, negatives, ids)

    # -- baselines: fit on the train split only ------------------------------------------
    with step(log, "fitting baselines on the train split"):
        tr = P.training_rows(df).toPandas()
        if tr.empty:
            raise ValueError("the train split is empty; nothing to fit baselines on")
        events = B.TrainEvents.from_pandas(tr)
        item_scorers = [b.fit(events) for b in B.item_baselines(n_items, ec.popularity_half_life_days, ec.cooccurrence_half_life_days)]

    # -- churn snapshots: evaluation as of the split's cut, fit inside the train period ---
    with step(log, "churn snapshots"):
        cuts = _cutoffs(spark, cfg, ex)
        t1 = cuts["valid_start"]
        cut = t1 if split == "valid" else cuts["test_start"]
        snap_cols = [*P.ARRAY_FEATURES, "length", "last_ts", "user_id", "elapsed_s", "returned", "return_after_s"]
        snap = P.churn_snapshot(ex, cut).select(*snap_cols).orderBy("user_id").toPandas()
        fit_cut = t1 - max(horizons) * P.DAY_S
        fit = P.churn_snapshot(ex, fit_cut, observe_until_s=t1).select(*snap_cols).toPandas()
        at_t1 = P.churn_snapshot(ex, t1, observe_until_s=t1).select("elapsed_s").toPandas()
    churn_scorers = []
    if len(snap) and len(fit):
        fb = P.to_batch(fit)
        fe = fit["elapsed_s"].to_numpy()
        flab = {d: P.churn_labels(fit["returned"].to_numpy(), fit["return_after_s"].to_numpy(), d) for d in horizons}
        # Return gaps seen in train, plus every window still open at T1 (censored there).
        dur = np.concatenate([tr["time_to_next_s"].to_numpy(), at_t1["elapsed_s"].to_numpy()])
        obs = np.concatenate([np.ones(len(tr)), np.zeros(len(at_t1))])
        churn_scorers = [
            B.DaysSinceLast(horizons).fit(fb, fe, flab),
            B.RFMLogistic(horizons).fit(fb, fe, flab),
            B.KaplanMeierChurn(horizons).fit(dur, obs),
            B.ExponentialDecay(horizons).fit(dur, obs),
        ]
    else:
        log.warning("no churn snapshot rows around the cut dates: churn metrics skipped")

    # -- ranking ------------------------------------------------------------------------------
    ranking: dict[str, dict[str, float]] = {}
    roles: dict[str, tuple[str, str, str]] = {}
    with step(log, f"full-catalogue ranking, {len(model_scorers) + len(item_scorers)} scorers"):
        for sc, role, ver, uri in model_scorers:
            ranking[sc.name] = rank_scorer(sc, batch, elapsed, targets, n_items, ks, negatives, ec.exclude_history, ec.chunk_size)
            roles[sc.name] = (role, ver, uri)
        for sc in item_scorers:
            ranking[sc.name] = rank_scorer(sc, batch, elapsed, targets, n_items, ks, negatives, ec.exclude_history, ec.chunk_size)
            roles[sc.name] = ("baseline", "", "")

    churn: dict[str, dict[str, float]] = {}
    curves: dict[str, Any] = {}
    if churn_scorers:
        with step(log, f"churn metrics on {len(snap)} users as of the {split} cut"):
            sb = P.to_batch(snap)
            se = snap["elapsed_s"].to_numpy()
            ret = snap["returned"].to_numpy()
            after = snap["return_after_s"].to_numpy()
            labels = {d: P.churn_labels(ret, after, d) for d in horizons}
            for sc in [s for s, *_ in model_scorers] + churn_scorers:
                churn[sc.name], curves[sc.name] = churn_scorer_metrics(sc, sb, se, labels, ret, after, ec.calibration_bins)
                roles.setdefault(sc.name, ("baseline", "", ""))

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

    # -- gate ---------------------------------------------------------------------------------
    decision = None
    metric = ec.primary_metric
    if model_scorers and challenger:
        champ_val = ranking.get("champion", {}).get(metric) if champion else None
        if champion is None and gate.alias_version(client, challenger["name"], ec.champion_alias) == challenger["version"]:
            champ_val = ranking["ebbtide"].get(metric)  # already the champion: it must still beat baselines
        decision = gate.decide(
            metric, ranking["ebbtide"].get(metric), champ_val,
            {k: v.get(metric) for k, v in ranking.items() if roles[k][0] == "baseline"},
            ec.tolerance, ec.baseline_margin, ec.require_beat_baselines,
        )
    header = {"run": ctx.run_id, "split": split, "protocol": protocol, "examples": len(targets),
              "items": n_items - 2, "gold_training_examples version": ex_version, "model": model_uri if model_scorers else "(baselines only)"}
    report_path = report.write_report(out_dir, header, ranking, churn, decision.as_dict() if decision else None, figures)

    # -- MLflow, then the gate's alias move (logged on the evaluation run) ------------------
    exp_id = gate.ensure_experiment(client, cfg)
    all_metrics = {k: dict(v) for k, v in ranking.items()}
    for k, v in churn.items():
        all_metrics.setdefault(k, {}).update(v)
    mlflow_run = gate.log_evaluation(
        client, exp_id, f"evaluate-{split}-{protocol}-{ctx.run_id}", all_metrics,
        {"split": split, "protocol": protocol, "model_uri": model_uri, "examples_version": ex_version,
         "n_examples": len(targets), "n_items": n_items, "exclude_history": ec.exclude_history},
        out_dir, model_run_id=(challenger or {}).get("run_id") or None, model_key="ebbtide", split=split,
    )
    gate_result = None
    if decision is not None:
        gate_result = gate.apply_decision(client, challenger["name"], challenger["version"], decision,
                                          ec.champion_alias, run_id=mlflow_run, promote=ec.promote and not args.no_promote)

    # -- ops_evaluations ------------------------------------------------------------------------
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    common = {"run_id": ctx.run_id, "evaluated_at": now, "examples_version": int(ex_version), "split": split,
              "protocol": protocol, "mlflow_run_id": mlflow_run}
    rows = []
    for name, met in all_metrics.items():
        role, ver, uri = roles[name]
        n_ex = len(targets) if name in ranking else len(snap)
        rows += [dict(r, n_examples=n_ex) for r in metric_rows(name, role, ver, uri, met, common)]
    tables.write(_ops_df(spark, rows), cfg, OPS_TABLE, "merge", keys=OPS_KEYS, update_matched=True,
                 comment="One row per (model or baseline, metric, k, split, protocol, examples version); "
                         "k = rank cut-off, or the horizon in days for churn metrics")

    primary = {k: v.get(metric) for k, v in ranking.items()}
    log.info("%s by scorer: %s", metric, ", ".join(f"{k} {v:.4f}" for k, v in primary.items() if v is not None))
    return {
        "split": split, "protocol": protocol, "examples": len(targets), "items": n_items - 2,
        metric: primary, "recall@10": {k: v.get("recall@10") for k, v in ranking.items()},
        "mrr@10": {k: v.get("mrr@10") for k, v in ranking.items()},
        "churn_roc_auc_7d": {k: v.get(f"churn_{min(horizons)}d_roc_auc") for k, v in churn.items()} if churn else {},
        "report": report_path, "mlflow_run_id": mlflow_run, "rows": len(rows),
        "gate": gate_result and {k: gate_result[k] for k in ("promoted", "summary", "champion_after")},
    }
