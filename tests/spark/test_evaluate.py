"""Protocols and the evaluate stage on real Spark + Delta, with tiny gold tables built here in the
gold_training_examples schema of docs/architecture.md (censored rows as the sequences stage
writes them: one per user and split, at T1, T2 and the end of data)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

pytestmark = pytest.mark.spark
_ROWS: list = []  # the raw example rows the module's tables hold


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, spark):
    """One tiny gold table set for the module (conftest's cfg sets spark.sql.warehouse.dir, static
    in Spark 4: tables are addressed by path, so a fresh storage root and database isolate it)."""
    from conftest import make_config

    root = tmp_path_factory.mktemp("evaluate")
    c = make_config(root, f"storage.database=t_{abs(hash(root)) % 10**8}", "evaluate.sampled_negatives=5")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {c.storage.database}")
    _ROWS[:] = write_tables(spark, c)
    return c


@pytest.fixture
def ctx(cfg, spark):
    from ebbtide.cli import Context

    return Context(cfg, _spark=spark)


L = 5
DAY = 86400.0
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
T1_DAY, T2_DAY, END_DAY = 60.0, 80.0, 100.0
N_ITEMS = 22          # items 2..20 in training; 21 appears only in the test period
TEST_ONLY_ITEM = 21


def _user_events(u: int, rng) -> list[tuple[int, float]]:
    """A chain walk item -> item + 1 (mostly) with user-specific gaps; quitters stop early."""
    t = rng.uniform(0, 5)
    item = 2 + u % 19
    mean_gap = 1.0 if u % 3 else 6.0
    stop = END_DAY if u % 4 else rng.uniform(40, 90)
    ev = []
    while t < stop:
        ev.append((item, t))
        item = 2 + (item - 2 + (1 if rng.random() < 0.8 else 3)) % 19
        t += rng.exponential(mean_gap)
    if u % 5 == 0:  # a new item only after T2
        ev.append((TEST_ONLY_ITEM, max(t, T2_DAY + 1.0) if t < END_DAY else END_DAY - 0.5))
        ev.sort(key=lambda x: x[1])
    return [e for e in ev if e[1] <= END_DAY]


def _window(ev, end):
    """Left-padded arrays of events ev[max(0, end-L):end]."""
    w = ev[max(0, end - L):end]
    pad = L - len(w)
    items = [0] * pad + [i for i, _ in w]
    # seconds since the previous input event; 0 for the window's first event and for pad
    gaps = [0.0] * pad + [0.0] + [(w[j][1] - w[j - 1][1]) * DAY for j in range(1, len(w))]
    hows = [0] * pad + [int((START + timedelta(days=t)).weekday() * 24 + (t * 24) % 24) for _, t in w]
    sess = [0] * pad + [1 if j == 0 or (w[j][1] - w[j - 1][1]) > 1 / 48 else 0 for j in range(len(w))]
    return items, gaps, hows, sess, len(w), w[-1][1]


def _ts(day):
    return (START + timedelta(days=day)).replace(tzinfo=None)


def build_examples(n_users=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        ev = _user_events(u, rng)
        uid = f"u{u:03d}"
        for k in range(1, len(ev)):
            items, gaps, hows, sess, n, last = _window(ev, k)
            tday = ev[k][1]
            split = "train" if tday < T1_DAY else "valid" if tday < T2_DAY else "test"
            rows.append((f"{uid}#{k}", uid, split, items, [2 if i else 0 for i in items], gaps, hows, sess, n,
                         _ts(last), int(ev[k][0]), 2, _ts(tday), float((tday - last) * DAY), 0))
        for split, cut in (("train", T1_DAY), ("valid", T2_DAY), ("test", END_DAY)):
            before = [e for e in ev if e[1] < cut or (split == "test" and e[1] <= cut)]
            if not before:
                continue
            items, gaps, hows, sess, n, last = _window(ev, len(before))
            rows.append((f"{uid}#censored-{split}", uid, split, items, [2 if i else 0 for i in items], gaps, hows,
                         sess, n, _ts(last), 0, 0, None, float((cut - last) * DAY), 1))
    return rows


def examples_schema():
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField("example_id", T.StringType()), T.StructField("user_id", T.StringType()),
        T.StructField("split", T.StringType()),
        T.StructField("item_idx", T.ArrayType(T.IntegerType())), T.StructField("event_type_idx", T.ArrayType(T.IntegerType())),
        T.StructField("gap_s", T.ArrayType(T.FloatType())), T.StructField("hour_of_week", T.ArrayType(T.IntegerType())),
        T.StructField("session_start", T.ArrayType(T.IntegerType())), T.StructField("length", T.IntegerType()),
        T.StructField("last_ts", T.TimestampType()), T.StructField("target_item", T.IntegerType()),
        T.StructField("target_event_type", T.IntegerType()), T.StructField("target_ts", T.TimestampType()),
        T.StructField("time_to_next_s", T.FloatType()), T.StructField("censored", T.IntegerType()),
    ])


def write_tables(spark, cfg, n_users=40):
    from ebbtide import tables

    rows = build_examples(n_users)
    tables.write(spark.createDataFrame(rows, examples_schema()), cfg, "gold_training_examples", "overwrite", partition_by=["split"])
    vocab = spark.createDataFrame([(f"m{i}", i) for i in range(2, N_ITEMS)], "item_id string, item_index int")
    tables.write(vocab, cfg, "gold_item_vocab", "overwrite")
    return rows


def _epoch(day):
    return (START + timedelta(days=day)).timestamp()


def test_temporal_training_rows_never_hold_a_test_period_event(spark, cfg):
    from pyspark.sql import functions as F

    from ebbtide import tables
    from ebbtide.evaluation import baselines as B, protocols as P

    ex = tables.read(spark, cfg, "gold_training_examples")
    tr = P.training_rows(ex).toPandas()
    assert tr["target_ts_s"].max() < _epoch(T1_DAY)
    # inputs of every train example end before its target, hence before T1
    train_inputs = ex.filter("split = 'train' AND censored = 0").agg(F.max(F.col("last_ts").cast("double"))).collect()[0][0]
    assert train_inputs < _epoch(T1_DAY)
    # the item seen only after T2 gets nothing from any baseline fitted on train
    ev = B.TrainEvents.from_pandas(tr)
    assert TEST_ONLY_ITEM not in set(ev.item.tolist()) | set(ev.last_item.tolist())
    pop = B.MostPopular(N_ITEMS).fit(ev)
    assert pop.pop[TEST_ONLY_ITEM] == 0
    # nor from the Spark aggregates evaluate fits them on
    agg = B.TrainAggregates.from_spark(P.training_rows(ex), N_ITEMS)
    assert agg.count[TEST_ONLY_ITEM] == 0 and agg.item_users[TEST_ONLY_ITEM] == 0
    assert TEST_ONLY_ITEM not in set(agg.last_item.tolist()) | set(agg.pair_a.tolist()) | set(agg.pair_b.tolist())
    assert agg.t_ref < _epoch(T1_DAY) and agg.n_rows == len(tr)
    # evaluation rows are the split's uncensored rows, all after T2
    te = P.evaluation_rows(ex, "test").select(F.min(F.col("target_ts").cast("double")), F.max("censored")).collect()[0]
    assert te[0] >= _epoch(T2_DAY) and te[1] == 0
    assert P.split_start(ex, "test") >= _epoch(T2_DAY)


def test_leave_last_out_holds_out_each_users_last_target(spark, cfg):
    from ebbtide import tables
    from ebbtide.evaluation import protocols as P

    df = P.apply_protocol(tables.read(spark, cfg, "gold_training_examples"), "leave-last-out")
    pdf = df.filter("censored = 0").select("user_id", "split", "target_ts").toPandas()
    for _, g in pdf.groupby("user_id"):
        g = g.sort_values("target_ts")
        assert g["split"].iloc[-1] == "test"
        if len(g) > 1:
            assert g["split"].iloc[-2] == "valid"
        assert (g["split"].iloc[:-2] == "train").all()
        # within a user, no training target is later than the held-out one
        assert g[g.split == "train"]["target_ts"].max() <= g[g.split == "test"]["target_ts"].min() if (g.split == "train").any() else True


def test_churn_snapshot_straddles_the_cut_and_hides_the_future(spark, cfg):
    from ebbtide import tables
    from ebbtide.evaluation import protocols as P

    rows = _ROWS
    ex = tables.read(spark, cfg, "gold_training_examples")
    cut = _epoch(T2_DAY)
    snap = P.churn_snapshot(ex, cut).toPandas()
    assert snap["user_id"].is_unique
    assert (snap["elapsed_s"] > 0).all()
    assert set(snap["returned"]) <= {0, 1}
    # a user's returned flag matches the raw rows: any uncensored target at or after T2
    for uid, g in snap.set_index("user_id").iterrows():
        later = [r for r in rows if r[1] == uid and r[14] == 0 and r[12] is not None and r[12] >= _ts(T2_DAY)]
        assert g["returned"] == (1 if later else 0), uid
        if later:
            assert g["return_after_s"] == pytest.approx(min(r[12] for r in later).replace(tzinfo=timezone.utc).timestamp() - cut, abs=1)
        else:  # censored at the end of data, not at the artificial valid cut-off T2
            assert g["return_after_s"] == pytest.approx((END_DAY - T2_DAY) * DAY, abs=1)
    # observed only until T1: nothing at or after T1 counts as a return
    fit = P.churn_snapshot(ex, _epoch(T1_DAY - 30), observe_until_s=_epoch(T1_DAY)).toPandas()
    assert (fit["return_after_s"] <= 30 * DAY + 1).all()
    assert fit["returned"].sum() > 0


def _nightly_rows():
    """Ten example rows, windows of L = 3, two users over 2025-03-10 (D1) and 2025-03-11 (D2):

    u1: #8 D0 22:00 item 2 | #9 and #10 both D1 01:00, items 3, 4 | #11 D1 18:00 item 3 | #12 D2 09:00 item 5
    u2: #1 D1 03:00 item 6 (first event) | #2 D1 04:00 item 7 | #3 D2 00:00 item 8 | #4 D2 10:00 OOV | #5 D2 23:59:59 item 9
    plus one censored row each (never a nightly row)."""
    d0 = datetime(2025, 3, 9)

    def at(day, h, m=0, s=0):
        return d0 + timedelta(days=day, hours=h, minutes=m, seconds=s)

    ev = {"u1": [(8, 2, at(0, 22)), (9, 3, at(1, 1)), (10, 4, at(1, 1)), (11, 3, at(1, 18)), (12, 5, at(2, 9))],
          "u2": [(1, 6, at(1, 3)), (2, 7, at(1, 4)), (3, 8, at(2, 0)), (4, 1, at(2, 10)), (5, 9, at(2, 23, 59, 59))]}
    rows = []
    for uid, e in ev.items():
        def window(end):
            w = e[max(0, end - 3):end]
            pad = [0] * (3 - len(w))
            return (pad + [i for _, i, _ in w], pad + [1] * len(w), [0.0] * 3, pad + [0] * len(w), pad + [0] * len(w),
                    len(w), w[-1][2])

        for k in range(1, len(e)):
            items, types, gaps, how, sess, n, last = window(k)
            seq, item, ts = e[k]
            rows.append((f"{uid}#{seq}", uid, "test", items, types, gaps, how, sess, n, last, item, 2, ts,
                         (ts - last).total_seconds(), 0))
        items, types, gaps, how, sess, n, last = window(len(e))
        rows.append((f"{uid}#censored-test", uid, "test", items, types, gaps, how, sess, n, last, 0, 0, None, 3600.0, 1))
    return rows


def test_nightly_examples_take_the_window_before_midnight_and_the_days_item_set(spark):
    from ebbtide.evaluation import protocols as P

    rows = _nightly_rows()
    assert len(rows) == 10
    df = spark.createDataFrame(rows, examples_schema())
    got = {(r["user_id"], str(r["day"])): r for r in P.nightly_examples(df).collect()}
    # u2 on D1 is not there: its first event that day is its first ever, so no window precedes midnight
    assert set(got) == {("u1", "2025-03-10"), ("u1", "2025-03-11"), ("u2", "2025-03-11")}
    a, b, c = got["u1", "2025-03-10"], got["u1", "2025-03-11"], got["u2", "2025-03-11"]
    # #9 and #10 share a time: the sequence number (9 < 10, not the string order) picks #9's window
    assert a["example_id"] == "u1#9" and a["item_idx"] == [0, 0, 2] and a["length"] == 1
    assert a["elapsed_s"] == pytest.approx(2 * 3600)  # D0 22:00 -> D1 00:00
    assert a["target_items"] == [3, 4]  # item 3 twice that day, once in the set
    assert b["example_id"] == "u1#12" and b["item_idx"] == [3, 4, 3] and b["elapsed_s"] == pytest.approx(6 * 3600)
    assert b["target_items"] == [5]
    # a target at exactly 00:00 belongs to that day; the OOV target stays in the set (a certain miss)
    assert c["example_id"] == "u2#3" and c["item_idx"] == [0, 6, 7] and c["elapsed_s"] == pytest.approx(20 * 3600)
    assert c["target_items"] == [1, 8, 9]
    assert "target_item" not in a.asDict() and "time_to_next_s" not in a.asDict()


def test_candidate_items_are_the_train_splits_inputs_and_targets(spark, cfg):
    from ebbtide import tables
    from ebbtide.evaluation import protocols as P

    ex = tables.read(spark, cfg, "gold_training_examples")
    cand = {r["item"] for r in P.candidate_items(ex).collect()}
    train = [r for r in _ROWS if r[2] == "train"]
    seen = {i for r in train for i in r[3]} | {r[10] for r in train if r[14] == 0}
    assert cand == seen - {0, 1}
    assert TEST_ONLY_ITEM not in cand


def _args(**kw):
    a = dict(model_uri=None, split=None, protocol=None, baselines_only=False, models_only=False, no_champion=False,
             no_promote=False)
    a.update(kw)
    return argparse.Namespace(**a)


@pytest.mark.slow
def test_evaluate_baselines_only_writes_table_report_and_mlflow_idempotently(ctx, spark, cfg):
    from ebbtide import mlflow_uris, tables
    from ebbtide.evaluation import run as R
    from spec_check import assert_matches_spec

    out = R.run(ctx, _args(baselines_only=True))
    json.dumps(out, default=str)
    assert out["examples"] > 20 and out["examples"] == out["examples_by_view"]["nightly"]
    assert out["examples_by_view"]["request_time"] > out["examples"]  # several events a day for some users
    # the candidates are the train split's items: the item seen only after T2 is not one
    assert out["candidates"] == N_ITEMS - 3
    nd = out["ndcg@10"]
    assert set(nd) == {"most_popular", "recent_popular", "cooccurrence", "markov"}
    # the top-level keys are the nightly view; both views carry metric -> scorer -> value
    assert out["nightly"]["ndcg@10"] == nd and out["nightly"]["recall@10"] == out["recall@10"]
    rt = out["request_time"]["ndcg@10"]
    assert set(rt) == set(nd) and "sampled_ndcg@10" in out["request_time"] and "sampled_ndcg@10" not in out["nightly"]
    # the chain walk is first-order: Markov must beat popularity by a wide margin in both views
    assert nd["markov"] > nd["most_popular"] + 0.2
    assert rt["markov"] > rt["most_popular"] + 0.2
    churners = {"days_since_last", "rfm_logistic", "kaplan_meier", "exponential_decay"}
    for key in ("churn_roc_auc_7d", "churn_roc_auc_30d", "churn_roc_auc_7d_recent", "churn_roc_auc_30d_recent"):
        assert set(out[key]) == churners, key
    ops = tables.read(spark, cfg, "ops_evaluations")
    n1 = ops.count()
    assert n1 == out["rows"]
    assert_matches_spec(spark, cfg, "ops_evaluations")
    r = ops.filter("model_name = 'markov' AND metric = 'ndcg' AND k = 10").collect()
    by_protocol = {x["protocol"]: x for x in r}
    assert set(by_protocol) == {"temporal/nightly", "temporal/request_time"}
    assert by_protocol["temporal/nightly"]["value"] == pytest.approx(nd["markov"]) and r[0]["split"] == "test"
    assert by_protocol["temporal/nightly"]["n_examples"] == out["examples"]
    assert by_protocol["temporal/request_time"]["value"] == pytest.approx(rt["markov"])
    assert ops.filter("metric = 'churn_roc_auc' AND k = 7").count() == 4
    assert ops.filter("metric = 'churn_recent_roc_auc' AND k = 30 AND protocol = 'temporal/nightly'").count() == 4
    assert ops.filter("metric = 'sampled_ndcg' AND k = 10").count() == 4
    import os

    rep = out["report"]
    assert os.path.exists(rep) and "| markov |" in open(rep).read()
    assert os.path.exists(os.path.join(os.path.dirname(rep), "calibration.png"))
    assert os.path.exists(os.path.join(os.path.dirname(rep), "decay_curves.png"))
    run = mlflow_uris.client(mlflow_uris.from_config(cfg)).get_run(out["mlflow_run_id"])
    assert run.data.metrics["markov.ndcg_at_10"] == pytest.approx(nd["markov"])
    assert run.data.metrics["markov.request_time_ndcg_at_10"] == pytest.approx(rt["markov"])

    # a rerun on the same table version updates rows instead of adding them; the negatives are reused
    out2 = R.run(ctx, _args(baselines_only=True))
    assert tables.read(spark, cfg, "ops_evaluations").count() == n1
    assert out2["ndcg@10"] == pytest.approx(nd)

    # leave-last-out on the valid split is another set of rows
    out3 = R.run(ctx, _args(baselines_only=True, protocol="leave-last-out", split="valid"))
    assert tables.read(spark, cfg, "ops_evaluations").count() == n1 + out3["rows"]


def _figures(summary, path=""):
    """The summary's numbers, flattened to path -> value."""
    if isinstance(summary, dict):
        return {k: v for key, sub in summary.items() for k, v in _figures(sub, f"{path}/{key}").items()}
    return {path: summary} if isinstance(summary, (int, float)) and not isinstance(summary, bool) else {}


@pytest.mark.slow
def test_evaluate_figures_equal_those_of_baselines_fitted_on_the_collected_train_rows(ctx, spark, cfg, monkeypatch):
    """Evaluate fits the baselines on Spark aggregates of the train split. Fitted on the collected
    train rows instead, as it did before (their numpy aggregates, TrainEvents.aggregates), every
    figure of the summary is the same."""
    from ebbtide.evaluation import baselines as B, run as R

    out = R.run(ctx, _args(baselines_only=True))

    def from_collected_rows(cls, tr, n_items, half_lives_s=(), pairs=True):
        return B.TrainEvents.from_pandas(tr.toPandas()).aggregates(n_items, half_lives_s)

    monkeypatch.setattr(B.TrainAggregates, "from_spark", classmethod(from_collected_rows))
    before = R.run(ctx, _args(baselines_only=True))
    got, want = _figures(out), _figures(before)
    assert set(got) == set(want) and "/nightly/ndcg@10/cooccurrence" in got and "/churn_roc_auc_7d/kaplan_meier" in got
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12, nan_ok=True)


def test_evaluate_with_unloadable_model_names_the_fix(ctx, spark, cfg):
    from ebbtide.evaluation import run as R

    with pytest.raises(ValueError, match="baselines-only"):
        R.run(ctx, _args(model_uri="models:/ebbtide@challenger"))
    with pytest.raises(ValueError, match="exclude each other"):
        R.run(ctx, _args(baselines_only=True, models_only=True))


class RandomStandIn:
    """A model that knows nothing: seeded random scores. Must lose to the baselines."""

    def __init__(self, seed=0):
        self.seed = seed

    def score_all(self, batch, elapsed_s, log_p=None, view="nightly"):
        # A fresh generator per call: the same rows get the same scores in every run, whatever
        # views were scored before (the champion's score is compared across two runs).
        return np.random.default_rng(self.seed).random((len(elapsed_s), N_ITEMS)).astype(np.float32)

    def churn(self, batch, elapsed_s):
        n = len(elapsed_s)
        return {"p_return_7d": np.full(n, 0.5), "p_return_30d": np.full(n, 0.7)}


class OracleStandIn(RandomStandIn):
    """Knows each example's target from its window: must beat every baseline. It only stands in
    for the trained model so that the promote path of the stage can be exercised end to end."""

    def __init__(self, rows):
        super().__init__(1)
        self.answer = {(tuple(r[3]), tuple(np.float32(g) for g in r[5])): r[10] for r in rows if r[14] == 0}

    def score_all(self, batch, elapsed_s, log_p=None, view="nightly"):
        s = super().score_all(batch, elapsed_s) * 0.1
        for i, (items, gaps) in enumerate(zip(batch["item_idx"], batch["gap_s"])):
            t = self.answer.get((tuple(int(x) for x in items), tuple(np.float32(g) for g in gaps)))
            if t is not None:
                s[i, t] = 1.0
        return s


@pytest.mark.slow
def test_evaluate_gate_promotes_a_strong_model_then_refuses_a_weak_one(ctx, spark, cfg, monkeypatch):
    import mlflow

    from ebbtide import mlflow_uris, tables
    from ebbtide.evaluation import run as R
    from ebbtide.evaluation.gate import alias_version

    uris = mlflow_uris.from_config(cfg)
    client = mlflow_uris.client(uris)
    mlflow_uris.configure(uris)
    exp = client.create_experiment("registry-fixture", artifact_location=Path(cfg.path("{root}/art")).as_uri())

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [0.0] * len(model_input)

    versions = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=exp):
            info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), registered_model_name="ebbtide",
                                           pip_requirements=[])
            versions.append(str(info.registered_model_version))
    mlflow.set_tracking_uri(None)
    weak, strong = versions
    stand_ins = {weak: RandomStandIn(), strong: OracleStandIn(_ROWS)}

    def load(model_uri, uris=None):
        ref = model_uri[len("models:/ebbtide"):]
        v = alias_version(client, "ebbtide", ref[1:]) if ref.startswith("@") else ref.lstrip("/")
        return stand_ins[v]

    monkeypatch.setattr(R, "_load_predictor", load)

    # no champion yet: the strong model beats every baseline and becomes champion
    client.set_registered_model_alias("ebbtide", "challenger", strong)
    out = R.run(ctx, _args())
    assert out["gate"]["promoted"] is True, out["gate"]
    assert alias_version(client, "ebbtide", "champion") == strong
    assert out["ndcg@10"]["ebbtide"] > max(v for k, v in out["ndcg@10"].items() if k != "ebbtide")
    assert client.get_model_version("ebbtide", strong).tags["gate.decision"] == "promoted"
    strong_ndcg = out["ndcg@10"]["ebbtide"]

    # the weak one, against that champion scored in the same run: refused on both counts
    client.set_registered_model_alias("ebbtide", "challenger", weak)
    out = R.run(ctx, _args())
    assert "champion" in out["ndcg@10"] and out["gate"]["promoted"] is False
    assert "< champion" in out["gate"]["summary"] and "does not beat baseline" in out["gate"]["summary"]
    assert out["ndcg@10"]["champion"] == pytest.approx(strong_ndcg)
    assert alias_version(client, "ebbtide", "champion") == strong
    assert client.get_model_version("ebbtide", weak).tags["gate.decision"] == "refused"
    ops = tables.read(spark, cfg, "ops_evaluations")
    mine = ops.filter(f"model_role = 'challenger' AND model_version = '{weak}' AND metric = 'ndcg' AND k = 10")
    assert sorted(r["protocol"] for r in mine.collect()) == ["temporal/nightly", "temporal/request_time"]
    assert ops.filter(f"model_role = 'champion' AND model_version = '{strong}'").count() > 0

    # models only (the results run's ablation): the models' figures as the full run ranked them, no
    # baseline fitted or ranked, no gate, no alias moved
    only = R.run(ctx, _args(models_only=True))
    for view in ("nightly", "request_time"):
        assert set(only[view]["ndcg@10"]) == {"ebbtide", "champion"}
        assert only[view]["ndcg@10"] == pytest.approx({k: out[view]["ndcg@10"][k] for k in ("ebbtide", "champion")})
    assert set(only["churn_roc_auc_7d"]) == {"ebbtide", "champion"}
    assert only["churn_roc_auc_7d"] == pytest.approx({k: out["churn_roc_auc_7d"][k] for k in ("ebbtide", "champion")},
                                                     nan_ok=True)
    assert only["gate"] is None and alias_version(client, "ebbtide", "champion") == strong
    # the challenger's own training run got its test metrics
    run_id = client.get_model_version("ebbtide", weak).run_id
    assert "test_ndcg_at_10" in client.get_run(run_id).data.metrics


def test_the_item_neighbour_term_is_chosen_per_view_on_validation_and_saved_with_the_predictor(ctx, spark, cfg, tmp_path):
    """ebbtide.model.neighbours.fit on real tables: the similarity comes from the train split's
    (user, item) presence (the same as the numpy aggregates of the collected train rows), the grid
    ranks the validation views the prior's choice ranks, and the predictor folder carries both."""
    from conftest import tiny_predictor

    from ebbtide import tables
    from ebbtide.evaluation import baselines as B, protocols as P
    from ebbtide.model import neighbours as NB, predictor as Pr, prior

    folder = tiny_predictor(tmp_path / "pred", N_ITEMS, L)
    version = tables.version(spark, cfg, "gold_training_examples")
    out = NB.fit(spark, cfg, version, folder)

    assert set(out) == {"nightly", "request_time"}
    assert out["nightly"]["chosen_on"] == ["nightly", "request_time"] and out["request_time"]["chosen_on"] == ["request_time"]
    tc = cfg.section("train")
    for c in out.values():
        assert len(c["grid"]) == 1 + len(tc.neighbour_half_lives_days) * len(tc.neighbour_weights)
        assert c["valid_ndcg_at_10"] == max(c["grid"].values()) and c["valid_ndcg_at_10_without"] == c["grid"]["0"]
        assert (c["weight"] == 0.0) == (c["half_life_days"] is None)
    # the similarity saved is the one the collected train rows give
    df = P.apply_protocol(tables.read(spark, cfg, "gold_training_examples"), cfg.section("evaluate").protocol)
    ref = NB.similarity(B.TrainEvents.from_pandas(P.training_rows(df).toPandas()).aggregates(N_ITEMS), tc.neighbour_top_k)
    saved = NB.load(folder)
    assert saved.nnz > 0 and abs(saved - ref).max() < 1e-6
    # the grid's "0" is the network alone as the prior's validation ranks it
    val = prior.validation(spark, cfg, version)
    base = Pr.Predictor.load(folder).score_all(*val.views["request_time"][:2], view="request_time")
    assert out["request_time"]["grid"]["0"] == pytest.approx(val.ndcg("request_time", base))
    w, h = 2.0, 30.0
    aff = NB.affinity(saved, *val.views["request_time"][:2], h * DAY)
    assert out["request_time"]["grid"][f"{h:g}d x {w:g}"] == pytest.approx(
        val.ndcg("request_time", base + NB.term_of(aff, w)))
