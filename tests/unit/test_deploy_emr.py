"""The EMR definitions checked against the EMR API itself, offline: botocore's bundled service models
(`emr`, `emr-serverless`) and its own parameter validator, the check a boto3 client runs before it
sends a request. No client is created and the network is shut for these tests.

- `steps.json` is the `aws emr add-steps --steps file://...` form, which the AWS CLI turns into the
  API's `StepConfig` list; it is translated here as the CLI does and validated as `AddJobFlowSteps`.
- `cluster.json` is a `RunJobFlow` request (what `aws emr create-cluster` sends), validated as is.
- `serverless-start-job-run.json` is a `StartJobRun` request, validated with the client token the
  CLI and boto3 fill in.

tests/unit/test_deploy.py checks what the API cannot know: that every step runs a real stage with
arguments its parser accepts."""
from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path

import pytest

botocore = pytest.importorskip("botocore")
from botocore.handlers import generate_idempotent_uuid  # noqa: E402
from botocore.session import get_session  # noqa: E402
from botocore.validate import ParamValidator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EMR = ROOT / "deploy" / "emr"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Validation only: any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access from an offline validation test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def session():
    return get_session()


def _operation(session, service: str, name: str):
    return session.get_service_model(service).operation_model(name)


def _enum_errors(value, shape, path: str) -> list[str]:
    """Enum values, which botocore's validator leaves to the service: a wrong one is only
    refused once the request reaches AWS."""
    errors = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, v in value.items():
            if key in shape.members:
                errors += _enum_errors(v, shape.members[key], f"{path}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, v in enumerate(value):
            errors += _enum_errors(v, shape.member, f"{path}[{i}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for k, v in value.items():
            errors += _enum_errors(v, shape.value, f"{path}.{k}")
    elif shape.type_name == "string" and shape.enum and isinstance(value, str) and value not in shape.enum:
        errors.append(f"{path}: {value!r} is not one of {', '.join(shape.enum)}")
    return errors


def validation_errors(session, service: str, operation: str, params: dict) -> list[str]:
    """What botocore reports for these request parameters (empty: valid), plus enum checks."""
    op = _operation(session, service, operation)
    report = ParamValidator().validate(params, op.input_shape)
    errors = report.generate_report().splitlines() if report.has_errors() else []
    return errors + _enum_errors(params, op.input_shape, operation)


# The keys of one step in `aws emr add-steps --steps` (awscli/customizations/emr/argumentschema.py,
# STEPS_SCHEMA). The CLI drops any other key without a word; here it is an error, so a misspelt
# key cannot vanish on its way to the API.
CLI_STEP_KEYS = {"Type", "Name", "ActionOnFailure", "Jar", "Args", "MainClass", "Properties"}


def cli_steps_to_step_configs(steps: list[dict]) -> list[dict]:
    """The AWS CLI's translation of `add-steps --steps` into `AddJobFlowSteps` `Steps`, for the
    CUSTOM_JAR steps ebbtide uses (awscli/customizations/emr/steputils.py, build_custom_jar_step and
    emrutils.build_step): Type defaults to CUSTOM_JAR, Name to "Custom JAR", ActionOnFailure to
    CONTINUE; Jar (required), Args, MainClass and Properties ("k=v,k2=v2") go into HadoopJarStep."""
    out = []
    for i, step in enumerate(steps):
        unknown = set(step) - CLI_STEP_KEYS
        if unknown:
            raise ValueError(f"step {i}: keys the AWS CLI does not know (it would drop them): {sorted(unknown)}")
        kind = str(step.get("Type", "CUSTOM_JAR")).lower()
        if kind != "custom_jar":
            raise ValueError(f"step {i}: only CUSTOM_JAR steps are translated here, not {step['Type']!r}")
        if not step.get("Jar"):
            raise ValueError(f"step {i}: Jar is required for a CUSTOM_JAR step")
        jar = {"Jar": step["Jar"]}
        for key in ("Args", "MainClass"):
            if step.get(key) is not None:
                jar[key] = step[key]
        if step.get("Properties"):
            jar["Properties"] = [dict(zip(("Key", "Value"), kv.split("=", 1))) for kv in step["Properties"].split(",")]
        out.append({
            "Name": step.get("Name", "Custom JAR"),
            "ActionOnFailure": step.get("ActionOnFailure", "CONTINUE"),
            "HadoopJarStep": jar,
        })
    return out


def _steps() -> list[dict]:
    return json.loads((EMR / "steps.json").read_text())


def _cluster() -> dict:
    return json.loads((EMR / "cluster.json").read_text())


def _serverless() -> dict:
    return json.loads((EMR / "serverless-start-job-run.json").read_text())


def _confs(step: dict) -> dict[str, str]:
    """The step's spark-submit --conf settings."""
    args = step["Args"]
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--conf")


def _with_client_token(session, params: dict) -> dict:
    """The CLI and boto3 fill the idempotency token in (botocore.handlers.generate_idempotent_uuid)
    before validating; the JSON file leaves it out so that each run is a new one."""
    params = copy.deepcopy(params)
    generate_idempotent_uuid(params, _operation(session, "emr-serverless", "StartJobRun"))
    return params


# ------------------------------------------------------------------------------------------------


def test_steps_are_valid_add_job_flow_steps(session):
    steps = cli_steps_to_step_configs(_steps())
    assert len(steps) == 8 and all(s["HadoopJarStep"]["Jar"] == "command-runner.jar" for s in steps)
    assert validation_errors(session, "emr", "AddJobFlowSteps", {"JobFlowId": "j-XXXXXXXX", "Steps": steps}) == []


def test_cluster_is_a_valid_run_job_flow(session):
    cluster = _cluster()
    assert validation_errors(session, "emr", "RunJobFlow", cluster) == []


def test_cluster_matches_the_steps_bootstrap_and_docs():
    cluster, steps = _cluster(), _steps()
    # The release the docs name: Spark 4.0 and Delta 4.0, what ebbtide is built and tested on.
    label = cluster["ReleaseLabel"]
    assert label in (ROOT / "docs" / "deploy.md").read_text()
    assert [a["Name"] for a in cluster["Applications"]] == ["Spark"]
    conf = {c["Classification"]: c.get("Properties", {}) for c in cluster["Configurations"]}
    assert conf["delta-defaults"]["delta.enabled"] == "true"
    # The session settings every step passes, set cluster-wide as well.
    for key in ("spark.sql.extensions", "spark.sql.catalog.spark_catalog", "spark.sql.session.timeZone"):
        assert {_confs(s)[key] for s in steps} == {conf["spark-defaults"][key]}, key
    assert cluster["LogUri"].startswith("s3://YOUR-BUCKET/")

    # The bootstrap action is deploy/emr/bootstrap.sh, given the archive the CPU steps ship.
    (boot,) = cluster["BootstrapActions"]
    action = boot["ScriptBootstrapAction"]
    assert action["Path"].endswith("/deploy/emr/bootstrap.sh")
    archives = {s["Args"][s["Args"].index("--archives") + 1].split("#")[0] for s in steps if "--archives" in s["Args"]}
    assert action["Args"] == sorted(archives)

    # GPU nodes for training: YARN knows the GPU resource (the train step asks for one per executor)
    # and the GPU group's NodeManagers run the GPU plugin, with the cgroup the bootstrap mounts.
    groups = cluster["Instances"]["InstanceGroups"]
    assert [g["InstanceRole"] for g in groups].count("MASTER") == 1
    gpu = [g for g in groups if re.match(r"(g|p)\d", g["InstanceType"])]
    cpu_core = [g for g in groups if g["InstanceRole"] == "CORE" and g not in gpu]
    assert len(gpu) == 1 and cpu_core, "a primary, CPU core nodes and one GPU group"
    train = next(s for s in steps if "train" in s["Name"])
    num_proc = int(train["Args"][train["Args"].index("--num-proc") + 1])
    assert gpu[0]["InstanceCount"] >= num_proc, "one GPU per training process"
    assert conf["yarn-site"]["yarn.resource-types"] == "yarn.io/gpu"
    assert conf["capacity-scheduler"]["yarn.scheduler.capacity.resource-calculator"].endswith("DominantResourceCalculator")
    gconf = {c["Classification"]: c for c in gpu[0]["Configurations"]}
    yarn = gconf["yarn-site"]["Properties"]
    assert yarn["yarn.nodemanager.resource-plugins"] == "yarn.io/gpu" and yarn["yarn.resource-types"] == "yarn.io/gpu"
    executor = {c["Classification"]: c["Properties"] for c in gconf["container-executor"]["Configurations"]}
    assert executor["gpu"]["module.enabled"] == "true"
    cgroup = yarn["yarn.nodemanager.linux-container-executor.cgroups.mount-path"]
    assert executor["cgroups"]["root"] == cgroup
    assert f"CGROUP_ROOT={cgroup}\n" in (EMR / "bootstrap.sh").read_text()
    key = "spark.executor.resource.gpu.discoveryScript"
    assert conf["spark-defaults"][key] == _confs(train)[key]


def test_serverless_job_run_is_a_valid_start_job_run(session):
    run = _serverless()
    assert "clientToken" not in run
    assert validation_errors(session, "emr-serverless", "StartJobRun", _with_client_token(session, run)) == []


def test_validation_catches_what_aws_would_refuse(session):
    """The checks above can fail: each broken copy below is reported."""
    steps = _steps()

    def step_errors(raw_steps=None, api_steps=None) -> list[str]:
        api = api_steps if api_steps is not None else cli_steps_to_step_configs(raw_steps)
        return validation_errors(session, "emr", "AddJobFlowSteps", {"JobFlowId": "j-XXXXXXXX", "Steps": api})

    # The API's own shape without HadoopJarStep (the CLI's Jar/Args left at the top).
    api = cli_steps_to_step_configs(steps[:1])
    api[0]["Jar"] = api[0]["HadoopJarStep"].pop("Jar")
    errors = step_errors(api_steps=api)
    assert any('Missing required parameter in Steps[0].HadoopJarStep: "Jar"' in e for e in errors), errors
    assert any('Unknown parameter in Steps[0]: "Jar"' in e for e in errors), errors
    del api[0]["HadoopJarStep"]
    assert any('Missing required parameter in Steps[0]: "HadoopJarStep"' in e for e in step_errors(api_steps=api))
    # A misspelt key, which the CLI would drop silently.
    bad = copy.deepcopy(steps[:1])
    bad[0]["Arg"] = bad[0].pop("Args")
    with pytest.raises(ValueError, match="Arg"):
        cli_steps_to_step_configs(bad)
    # A value outside the API's enum, an argument that is not a string.
    bad = copy.deepcopy(steps[:1])
    bad[0]["ActionOnFailure"] = "CANCEL_AND_CONTINUE"
    bad[0]["Args"].append(3)
    errors = step_errors(bad)
    assert any("ActionOnFailure: 'CANCEL_AND_CONTINUE' is not one of" in e for e in errors), errors
    assert any("Invalid type for parameter Steps[0].HadoopJarStep.Args[" in e for e in errors), errors

    cluster = _cluster()
    cluster["Instances"]["InstanceGroups"][0]["InstanceCount"] = "1"
    cluster["Instances"]["InstanceGroups"][1]["InstanceRole"] = "WORKER"
    del cluster["Name"]
    errors = validation_errors(session, "emr", "RunJobFlow", cluster)
    assert any('Missing required parameter in input: "Name"' in e for e in errors), errors
    assert any("Invalid type for parameter Instances.InstanceGroups[0].InstanceCount" in e for e in errors), errors
    assert any("InstanceRole: 'WORKER' is not one of" in e for e in errors), errors

    run = _serverless()
    del run["executionRoleArn"]
    errors = validation_errors(session, "emr-serverless", "StartJobRun", run)
    assert any('"executionRoleArn"' in e for e in errors) and any('"clientToken"' in e for e in errors), errors
