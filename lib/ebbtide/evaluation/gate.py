"""The promotion gate: `challenger` becomes `champion` only when it earns it.

``decide`` is a pure function of metric values, so every promote/refuse case is a unit test.
``apply_decision`` is the thin MLflow part: it moves the alias, tags the model version with
the decision and logs it on a run. Nothing else in the package moves the champion alias. The
client comes from :func:`ebbtide.mlflow_uris.client`, with the configured registry URI.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ebbtide.log import get_logger

log = get_logger("evaluate.gate")


@dataclass(frozen=True)
class Decision:
    promote: bool
    metric: str
    challenger: float
    champion: Optional[float]
    best_baseline: Optional[str]
    best_baseline_value: Optional[float]
    reasons: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        head = "promote" if self.promote else "keep champion"
        return f"{head}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["summary"] = self.summary
        return d


def _ok(x: Optional[float]) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def decide(
    metric: str,
    challenger: float,
    champion: Optional[float],
    baselines: dict[str, float],
    tolerance: float = 0.0,
    baseline_margin: float = 0.0,
    require_beat_baselines: bool = True,
) -> Decision:
    """Promote iff the challenger reaches ``champion + tolerance`` on ``metric`` (any value when
    there is no champion yet) and beats every baseline by more than ``baseline_margin``.
    Higher is better. A missing or non-finite challenger value never promotes."""
    reasons: list[str] = []
    promote = True
    best_name, best_val = None, None
    finite = {k: v for k, v in baselines.items() if _ok(v)}
    if finite:
        best_name = max(finite, key=finite.get)
        best_val = float(finite[best_name])
    if not _ok(challenger):
        return Decision(False, metric, float("nan") if challenger is None else challenger, champion,
                        best_name, best_val, [f"challenger has no finite {metric}"])
    if champion is None or not _ok(champion):
        reasons.append(f"no current champion {metric} to beat")
    elif challenger >= champion + tolerance:
        reasons.append(f"{metric} {challenger:.4f} >= champion {champion:.4f} + tolerance {tolerance:g}")
    else:
        promote = False
        reasons.append(f"{metric} {challenger:.4f} < champion {champion:.4f} + tolerance {tolerance:g}")
    if require_beat_baselines:
        beaten_by = [k for k, v in finite.items() if not challenger > v + baseline_margin]
        if beaten_by:
            promote = False
            worst = ", ".join(f"{k} {finite[k]:.4f}" for k in sorted(beaten_by, key=lambda k: -finite[k]))
            reasons.append(f"does not beat baseline(s) on {metric} (margin {baseline_margin:g}): {worst}")
        elif finite:
            reasons.append(f"beats every baseline (best: {best_name} {best_val:.4f})")
        else:
            reasons.append("no baseline values to compare")
    return Decision(promote, metric, float(challenger), None if champion is None else float(champion),
                    best_name, best_val, reasons)


# ---------------------------------------------------------------------------------------
# MLflow (registry aliases, tags, the logged decision)
# ---------------------------------------------------------------------------------------


def alias_version(client, model_name: str, alias: str) -> Optional[str]:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def apply_decision(
    client,
    model_name: str,
    challenger_version: str,
    decision: Decision,
    champion_alias: str = "champion",
    run_id: Optional[str] = None,
    promote: bool = True,
) -> dict[str, Any]:
    """Tag the challenger's version with the decision, move ``champion_alias`` to it when the
    decision says so (and ``promote`` is on), and log the decision on ``run_id``."""
    before = alias_version(client, model_name, champion_alias)
    moved = False
    if decision.promote and promote:
        client.set_registered_model_alias(model_name, champion_alias, challenger_version)
        moved = True
    tags = {
        "gate.decision": "promoted" if moved else ("would_promote" if decision.promote else "refused"),
        "gate.metric": decision.metric,
        "gate.value": f"{decision.challenger:.6f}",
        "gate.reason": decision.summary[:4900],
    }
    for k, v in tags.items():
        client.set_model_version_tag(model_name, challenger_version, k, v)
    result = {
        "model_name": model_name,
        "challenger_version": challenger_version,
        "champion_before": before,
        "champion_after": challenger_version if moved else before,
        "promoted": moved,
        **decision.as_dict(),
    }
    if run_id:
        client.log_text(run_id, json.dumps(result, indent=2, default=str), "gate_decision.json")
        client.set_tag(run_id, "gate.decision", tags["gate.decision"])
        client.set_tag(run_id, "gate.reason", tags["gate.reason"][:4900])
    log.info("gate for %s v%s: %s", model_name, challenger_version, decision.summary)
    return result


def resolve_registered(client, model_uri: str) -> Optional[dict[str, str]]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> name, version, run id; other URIs
    (runs:/, a folder) are not registered versions and give None."""
    if not model_uri.startswith("models:/"):
        return None
    from mlflow.exceptions import MlflowException

    ref = model_uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, ver = ref.rsplit("/", 1)
            mv = client.get_model_version(name, ver)
    except (MlflowException, ValueError) as e:
        raise ValueError(
            f"model {model_uri} is not in the registry at {client._registry_uri}: {e}. "
            "Train and register it first (`ebbtide train`), or pass --model-uri / --baselines-only"
        ) from None
    return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id or ""}


def metric_key(model: str, metric: str) -> str:
    """MLflow metric names allow no '@': ndcg@10 -> ndcg_at_10."""
    return f"{model}.{metric}".replace("@", "_at_")


def log_evaluation(
    client,
    experiment_id: str,
    run_name: str,
    metrics: dict[str, dict[str, float]],
    params: dict[str, Any],
    artifact_dir: Optional[str],
    model_run_id: Optional[str] = None,
    model_key: Optional[str] = None,
    split: str = "test",
) -> str:
    """One evaluation run holding every model's and baseline's metrics (and the report); the
    challenger's own metrics also go on its training run as ``{split}_{metric}``."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(experiment_id, run_name=run_name, tags={"ebbtide.stage": "evaluate"})
    rid = run.info.run_id
    ts = int(time.time() * 1000)
    ms = [Metric(metric_key(m, k), float(v), ts, 0) for m, d in metrics.items() for k, v in d.items()
          if isinstance(v, (int, float)) and math.isfinite(v)]
    ps = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, max(len(ms), 1), 900):
        client.log_batch(rid, metrics=ms[i : i + 900], params=ps if i == 0 else [], tags=[RunTag("ebbtide.split", split)] if i == 0 else [])
    if artifact_dir and os.path.isdir(artifact_dir):
        client.log_artifacts(rid, artifact_dir, "report")
    if model_run_id and model_key in metrics:
        own = [Metric(f"{split}_{k}".replace("@", "_at_"), float(v), ts, 0)
               for k, v in metrics[model_key].items() if isinstance(v, (int, float)) and math.isfinite(v)]
        for i in range(0, len(own), 900):
            client.log_batch(model_run_id, metrics=own[i : i + 900])
        client.set_tag(model_run_id, "ebbtide.evaluation_run", rid)
    client.set_terminated(rid)
    return rid
