"""The promotion gate: pure decisions, then the alias really moving in a SQLite MLflow store."""
import math

import pytest

from ebbtide.evaluation.gate import alias_version, apply_decision, decide

BASE = {"most_popular": 0.02, "markov": 0.05, "cooccurrence": 0.04}


def test_promotes_when_better_than_champion_and_every_baseline():
    d = decide("ndcg@10", 0.08, 0.07, BASE)
    assert d.promote
    assert d.best_baseline == "markov" and d.best_baseline_value == 0.05
    assert "beats every baseline" in d.summary


def test_refuses_when_champion_is_better():
    d = decide("ndcg@10", 0.06, 0.07, BASE)
    assert not d.promote
    assert "< champion 0.0700" in d.summary


def test_tolerance_in_both_directions():
    assert not decide("ndcg@10", 0.071, 0.07, BASE, tolerance=0.005).promote  # must gain 0.005
    assert decide("ndcg@10", 0.076, 0.07, BASE, tolerance=0.005).promote
    assert decide("ndcg@10", 0.069, 0.07, BASE, tolerance=-0.002).promote     # small drop accepted


def test_refuses_when_a_baseline_wins_even_without_champion():
    d = decide("ndcg@10", 0.045, None, BASE)
    assert not d.promote
    assert "markov 0.0500" in d.summary and "cooccurrence" not in d.summary.split("baseline(s)")[1]
    assert decide("ndcg@10", 0.045, None, BASE, require_beat_baselines=False).promote
    # a tie with a baseline does not beat it; a margin raises the bar
    assert not decide("ndcg@10", 0.05, None, BASE).promote
    assert not decide("ndcg@10", 0.055, None, BASE, baseline_margin=0.01).promote


def test_first_model_with_no_champion_is_promoted_when_it_beats_baselines():
    d = decide("ndcg@10", 0.06, None, BASE)
    assert d.promote and "no current champion" in d.summary


def test_missing_or_nan_challenger_never_promotes():
    assert not decide("ndcg@10", float("nan"), None, {}).promote
    assert not decide("ndcg@10", None, None, {}).promote
    # a NaN baseline is ignored, not a reason to refuse
    assert decide("ndcg@10", 0.1, None, {"x": float("nan")}).promote


@pytest.fixture
def registry(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment("gate-test", artifact_location=(tmp_path / "art").as_uri())

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return [0.0] * len(model_input)

    versions = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=exp) as run:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=Constant(), registered_model_name="tiny", pip_requirements=[]
            )
            versions.append(str(info.registered_model_version))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    yield client, versions, run.info.run_id
    mlflow.set_tracking_uri(None)


def test_alias_moves_only_on_promotion_and_decision_is_tagged(registry):
    client, (v1, v2), run_id = registry
    assert alias_version(client, "tiny", "champion") is None
    first = apply_decision(client, "tiny", v1, decide("ndcg@10", 0.06, None, BASE), run_id=run_id)
    assert first["promoted"] and alias_version(client, "tiny", "champion") == v1

    refused = apply_decision(client, "tiny", v2, decide("ndcg@10", 0.055, 0.06, BASE), run_id=run_id)
    assert not refused["promoted"] and refused["champion_after"] == v1
    assert alias_version(client, "tiny", "champion") == v1
    tags = client.get_model_version("tiny", v2).tags
    assert tags["gate.decision"] == "refused" and "< champion" in tags["gate.reason"]

    # dry run: the decision says promote, the alias stays
    dry = apply_decision(client, "tiny", v2, decide("ndcg@10", 0.09, 0.06, BASE), promote=False)
    assert not dry["promoted"] and client.get_model_version("tiny", v2).tags["gate.decision"] == "would_promote"
    assert alias_version(client, "tiny", "champion") == v1

    ok = apply_decision(client, "tiny", v2, decide("ndcg@10", 0.09, 0.06, BASE), run_id=run_id)
    assert ok["promoted"] and ok["champion_before"] == v1
    assert alias_version(client, "tiny", "champion") == v2
    assert client.get_run(run_id).data.tags["gate.decision"] == "promoted"
    arts = [a.path for a in client.list_artifacts(run_id)]
    assert "gate_decision.json" in arts
    assert math.isclose(float(client.get_model_version("tiny", v2).tags["gate.value"]), 0.09)
