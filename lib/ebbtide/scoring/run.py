"""`ebbtide score`: nightly scoring -> gold_recommendations + gold_churn_decay.

Reads silver_events, gold_item_vocab and gold_event_type_vocab, builds each active user's
window as of the score date with the sequences stage's own function, scores it with the
champion model (one load per Python worker, batched torch inference over Arrow batches),
runs the quality gate on the persisted results, and only then replaces the score date's
partition of each table, one atomic Delta commit per table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
from dataclasses import dataclass
from typing import Optional

from ebbtide import mlflow_uris, tables
from ebbtide.log import get_logger, step
from ebbtide.mlflow_uris import MlflowUris

log = get_logger("score")

EVENTS = "silver_events"
ITEM_VOCAB = "gold_item_vocab"
EVENT_TYPE_VOCAB = "gold_event_type_vocab"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = (
        "Scores users active within score.lookback_days before --score-date, using only events "
        "before that date (00:00 UTC). Writes the score date's partition of gold_recommendations "
        "and gold_churn_decay after the quality gate passes; a rerun replaces exactly that "
        "partition. Keys: score.k, score.exclude_consumed, score.allow_items, score.deny_items, "
        "score.churn_*_below, score.quality.*."
    )
    p.add_argument("--score-date", type=_date, default=None, metavar="YYYY-MM-DD",
                   help="the day to score as of (00:00 UTC); default: today in UTC. Past dates backfill.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model-version", type=int, default=None, metavar="N",
                   help="score with version N of the registered model instead of the score.model_alias alias")
    g.add_argument("--model-uri", default=None, metavar="URI",
                   help="score with this model (models:/name/N, models:/name@alias, runs:/..., or a folder)")


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a date; write YYYY-MM-DD") from None


# --------------------------------------------------------------------------------------
# Model resolution (registry look-ups through ebbtide.mlflow_uris)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    uri: str  # what the workers load: pinned to a version, so an alias moving mid-job is harmless
    name: str
    version: Optional[int]
    uris: Optional[MlflowUris]  # the workers download the model from here
    # Tells this model from any other the same URI names in another registry, or in one made again
    # at the same path: the workers' model cache is keyed by it (inference.cached_model).
    identity: str = ""


def resolve_model(cfg, model_uri: Optional[str] = None, model_version: Optional[int] = None) -> ModelRef:
    score = cfg.section("score")
    mlconf = cfg.section("mlflow")
    uris = mlflow_uris.from_config(cfg)
    client = mlflow_uris.client(uris)
    name = score.model_name or mlconf.model_name
    alias = score.model_alias
    if model_uri:
        m = re.match(r"^models:/([^/@]+)(?:/(\d+)|@([\w-]+))$", model_uri)
        if not m:
            return ModelRef(model_uri, model_uri, None, uris)
        name, ver, alias = m.group(1), m.group(2), m.group(3)
        if ver:
            model_version = int(ver)
    try:
        if model_version is not None:
            mv = client.get_model_version(name, str(model_version))
        else:
            mv = client.get_model_version_by_alias(name, alias)
    except Exception as e:  # MLflow raises its own RestException / MlflowException types
        what = f"version {model_version}" if model_version is not None else f"alias @{alias}"
        raise ValueError(
            f"model {name!r} {what} not found in the registry at {uris.registry}: {e}. Train and register "
            "a model first (`ebbtide train`, then `ebbtide evaluate` to promote a champion), or pass "
            "--model-version / --model-uri"
        ) from None
    return ModelRef(f"models:/{name}/{mv.version}", name, int(mv.version), uris, identity=f"{mv.run_id}|{mv.source}")


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------


def scoring_partitions(configured: int, n_active: int, cores: int, users_per_partition: int) -> int:
    """Partitions of the scoring input: ``configured`` when set, else one per ``users_per_partition``
    active users and at least two per core (so a slow task does not hold the others up), so that
    the work per task, not the count of tasks, stays the same from a laptop to a cluster. A fixed
    count for given data and cores, so a rerun feeds the model identical batches."""
    if configured > 0:
        return configured
    by_size = -(-max(n_active, 0) // max(users_per_partition, 1))
    return max(2 * max(cores, 1), by_size, 1)


def popularity_prior(spark, cfg, model: ModelRef, events, item_vocab, score_ts: dt.datetime):
    """log p_recent as of the score date for a model whose nightly ranking has a popularity prior
    (ebbtide.model.prior): silver_events before midnight, each weighing 2^(-age / the half-life
    chosen for the nightly view). None for a model without one."""
    from ebbtide.model import predictor, prior
    from ebbtide.scoring import transform as T

    meta = predictor.read_meta(model.uri, model.uris)
    h = prior.half_life_s(meta)
    if h is None:
        log.info("%s ranks with the network alone (no popularity prior)", model.uri)
        return None
    n_items = int(meta["n_items"])
    with step(log, f"the catalogue's recent popularity (half-life {h / prior.DAY_S:g} days)"):
        weights = prior.item_weights(T.item_events(T.events_before(events, score_ts), item_vocab), n_items,
                                     score_ts.timestamp(), [h])[h]
        log.info("%d of %d items have events in the last %g days; prior weight %g", int((weights > 0).sum()),
                 n_items - 2, prior.MAX_AGE_HALF_LIVES * h / prior.DAY_S, prior.chosen(meta)["weight"])
    return prior.log_prior(weights, n_items)


def build(ctx, score_date: dt.date, model: ModelRef, *, loader=None):
    """The active users' scoring inputs (counted, persisted), the scored rows (lazy: one pass of the
    model per user for both tables, which the caller persists), both output DataFrames (read from the
    scored rows) and the lineage used. The caller unpersists the inputs and the scored rows."""
    from ebbtide.scoring import inference
    from ebbtide.scoring import transform as T

    cfg, spark = ctx.cfg, ctx.spark
    sc = cfg.section("score")
    score_ts = T.score_timestamp(score_date)
    events = tables.read(spark, cfg, EVENTS)
    item_vocab = tables.read(spark, cfg, ITEM_VOCAB)
    et_vocab = tables.read(spark, cfg, EVENT_TYPE_VOCAB)
    inputs = T.scoring_inputs(
        events, item_vocab, et_vocab,
        max_len=cfg.sequences.max_len, score_ts=score_ts, lookback_days=sc.lookback_days,
    )
    allow = T.item_list(spark, sc.allow_items, sc.allow_source, lambda n: tables.read(spark, cfg, n))
    deny = T.item_list(spark, sc.deny_items, sc.deny_source, lambda n: tables.read(spark, cfg, n))
    if sc.allow_items or sc.allow_source:
        if not allow:
            raise ValueError("score.allow_items / allow_source gave an empty allow list: nothing could be recommended")
    # The active users are counted before they are laid out, so the layout can follow their number.
    with step(log, "building windows of active users"):
        raw = inputs.persist()
        n_active = raw.count()
    parts = scoring_partitions(sc.partitions, n_active, spark.sparkContext.defaultParallelism, sc.users_per_partition)
    log.info("%d users active within %d days before %s; %d scoring partitions", n_active, sc.lookback_days,
             score_date, parts)
    common = dict(
        uris=model.uris, identity=model.identity, batch_users=sc.batch_users,
        max_batch_mfloats=sc.max_batch_mfloats, torch_threads=sc.torch_threads,
    )
    if loader is not None:
        common["loader"] = loader
    log_p = None if loader is not None else popularity_prior(spark, cfg, model, events, item_vocab, score_ts)
    fn = inference.score_fn(
        model.uri, k=sc.k, exclude_consumed=sc.exclude_consumed, allow=allow, deny=deny, because_top=sc.because_top,
        top_fading=sc.top_fading, fading_by=sc.fading_by, log_p=log_p, **common,
    )
    lineage = dict(
        score_date=score_date, model_name=model.name, model_version=model.version, run_id=ctx.run_id,
        scored_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
    )
    scored = T.scored(T.deterministic_layout(raw, parts), fn)
    recs = T.recommendations(scored, lineage)
    churn = T.churn_decay(scored, lineage, high_below=sc.churn_high_below, medium_below=sc.churn_medium_below)
    return (raw, scored), n_active, recs, churn, lineage


def publish(spark, cfg, df, name: str, score_date: dt.date) -> None:
    """Replace the score date's partition in one atomic Delta commit; other dates stay as they are.
    A table written before a column was added gains it in the same commit (older rows read null).
    Column comments travel in the schema (ebbtide.catalog), so the table's first commit already
    carries them (one ALTER per column would cost a Delta commit each)."""
    from ebbtide import catalog

    spec = catalog.spec(name)
    tables.write(
        spec.with_comments(df), cfg, name, mode="replace_where",
        replace_where=f"score_date = '{score_date.isoformat()}'", partition_by=spec.partition_by,
        comment=spec.comment, add_columns=True,
    )


def run(ctx, args) -> dict:
    cfg = ctx.cfg
    sc = cfg.section("score")
    score_date = args.score_date or dt.datetime.now(dt.timezone.utc).date()
    if sc.churn_high_below > sc.churn_medium_below:
        raise ValueError("score.churn_high_below must not exceed score.churn_medium_below")
    with step(log, "resolving the model"):
        model = resolve_model(cfg, args.model_uri, args.model_version)
    return score_and_publish(ctx, score_date, model)


def score_and_publish(ctx, score_date: dt.date, model: ModelRef, *, loader=None) -> dict:
    """Score, gate, publish. Nothing is written unless every quality check passes."""
    from ebbtide.scoring import quality
    from ebbtide.scoring.views import CHURN_DECAY, RECOMMENDATIONS, create_views

    cfg, spark = ctx.cfg, ctx.spark
    sc = cfg.section("score")
    log.info("scoring %s as of %s 00:00 UTC with %s", cfg.storage.database, score_date, model.uri)
    (raw, scored), n_active, recs, churn, _ = build(ctx, score_date, model, loader=loader)
    try:
        with step(log, f"scoring {n_active} users and running the quality gate"):
            # Persisted so that the gate and both writes read the very rows inferred once (both
            # tables' plans read this cache: Spark substitutes it for the same plan inside them).
            scored.persist()
            checks = quality.check_recommendations(recs, n_active, sc.k, sc.quality) + quality.check_churn(
                churn, n_active, sc.quality
            )
            for c in checks:
                log.debug("%s", c)
            quality.enforce(checks)
        with step(log, f"publishing score date {score_date}"):
            publish(spark, cfg, recs, RECOMMENDATIONS, score_date)
            publish(spark, cfg, churn, CHURN_DECAY, score_date)
            views = create_views(spark, cfg.storage.database)
    finally:
        for df in (scored, raw):
            df.unpersist()
    return {
        "score_date": score_date.isoformat(),
        "model": model.uri,
        "model_version": model.version,
        "active_users": n_active,
        "recommendation_rows": quality.rows(checks, RECOMMENDATIONS),
        "churn_rows": quality.rows(checks, CHURN_DECAY),
        "checks": len(checks),
        "views": views,
    }
