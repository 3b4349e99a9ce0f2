"""Structure of the deployment files that cannot run here (no Databricks CLI, no AWS): the bundle's
targets and job DAGs, the EMR steps and job run, every entry point and argument checked against
the real CLI (`ebbtide.cli.STAGES` and each stage's own argparse parser)."""
from __future__ import annotations

import fnmatch
import importlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "deploy" / "databricks"
EMR = ROOT / "deploy" / "emr"


def _parse_stage_args(stage: str, argv: list[str]):
    """Parse argv with the stage's real parser (SystemExit on an unknown or malformed option)."""
    from ebbtide.cli import STAGES, _stage_parser

    assert stage in STAGES, f"{stage!r} is not an ebbtide stage ({', '.join(STAGES)})"
    module = importlib.import_module(STAGES[stage][0])
    return _stage_parser(stage, module).parse_args(argv)


def _wheel_name() -> str:
    import tomllib

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return f"{proj['name']}-{proj['version']}-py3-none-any.whl"


# ------------------------------------------------------------------------------------------
# Databricks bundle
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> dict:
    root = yaml.safe_load((BUNDLE / "databricks.yml").read_text())
    resources: dict = {"jobs": {}}
    files = []
    for pattern in root.get("include", []):
        files += sorted(BUNDLE.glob(pattern))
    assert files, "databricks.yml includes no resource files"
    for f in files:
        doc = yaml.safe_load(f.read_text())
        for name, job in doc["resources"]["jobs"].items():
            assert name not in resources["jobs"], f"job {name} defined twice"
            job["_file"] = f
            resources["jobs"][name] = job
    root["resources"] = resources
    return root


def _vars_used(obj) -> set[str]:
    return set(re.findall(r"\$\{var\.([A-Za-z0-9_]+)\}", json.dumps(obj, default=str)))


def test_bundle_targets_and_variables(bundle):
    assert bundle["bundle"]["name"] == "ebbtide"
    assert {"dev", "prod"} <= set(bundle["targets"])
    assert bundle["targets"]["dev"].get("mode") == "development"
    assert bundle["targets"]["prod"].get("mode") == "production"
    declared = set(bundle["variables"])
    used = _vars_used(bundle["resources"]) | _vars_used(bundle["targets"])
    assert used <= declared, f"variables used but not declared: {used - declared}"
    for name, v in bundle["variables"].items():
        assert "default" in v and v.get("description"), f"variable {name} needs a default and a description"
    for t, spec in bundle["targets"].items():
        assert set(spec.get("variables", {})) <= declared, f"target {t} sets undeclared variables"


def _dag(job: dict) -> dict[str, set[str]]:
    deps = {}
    for t in job["tasks"]:
        assert t["task_key"] not in deps, f"duplicate task {t['task_key']}"
        deps[t["task_key"]] = {d["task_key"] for d in t.get("depends_on", [])}
    for k, ds in deps.items():
        assert ds <= set(deps), f"task {k} depends on unknown tasks {ds - set(deps)}"
    # acyclic: repeatedly peel tasks whose dependencies are done
    done: set[str] = set()
    while len(done) < len(deps):
        ready = {k for k, ds in deps.items() if k not in done and ds <= done}
        assert ready, f"dependency cycle among {set(deps) - done}"
        done |= ready
    return deps


def test_nightly_job_is_the_etl_chain(bundle):
    job = bundle["resources"]["jobs"]["ebbtide_nightly"]
    assert _dag(job) == {"ingest": set(), "sessionize": {"ingest"}, "sequences": {"sessionize"}, "score": {"sequences"},
                         "monitor": {"score"}}
    monitor = next(t for t in job["tasks"] if t["task_key"] == "monitor")["python_wheel_task"]["parameters"]
    assert "--fail-on-alert" in monitor and "--day-before" in monitor
    seq = next(t for t in job["tasks"] if t["task_key"] == "sequences")["python_wheel_task"]["parameters"]
    assert "--nightly" in seq
    assert job["schedule"]["quartz_cron_expression"] and job["schedule"]["timezone_id"] == "UTC"
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    version = bundle["variables"]["spark_version"]["default"]
    # DBR 17.3 LTS = Spark 4.0, the Spark this project is built and tested on.
    assert version.startswith("17.3.") and "scala2.13" in version
    for t in job["tasks"]:
        assert t["job_cluster_key"] in clusters


def test_training_job_on_gpu_then_gated_evaluate(bundle):
    job = bundle["resources"]["jobs"]["ebbtide_training"]
    assert _dag(job) == {"sequences": set(), "train": {"sequences"}, "evaluate": {"train"}}
    seq = next(t for t in job["tasks"] if t["task_key"] == "sequences")["python_wheel_task"]["parameters"]
    assert "--nightly" not in seq  # the weekly rebuild of the training examples
    cluster = job["job_clusters"][0]["new_cluster"]
    gpu_version = bundle["variables"]["gpu_spark_version"]["default"]
    assert cluster["spark_version"] == "${var.gpu_spark_version}" and "gpu-ml" in gpu_version
    train = next(t for t in job["tasks"] if t["task_key"] == "train")
    params = train["python_wheel_task"]["parameters"]
    launcher = params[params.index("--launcher") + 1]
    assert launcher == "${var.train_launcher}"
    assert bundle["variables"]["train_launcher"]["default"] == "torch-distributor"
    # Weekly: a warm start from the champion of the model the nightly job scores, from scratch
    # while there is none yet.
    from ebbtide.config import load_config

    assert _resolve(params[params.index("--warm-start") + 1], bundle) == (
        f"models:/{load_config(env='databricks').section('mlflow').model_name}@champion")
    assert params[params.index("--warm-start-if-missing") + 1] == "scratch"


def test_bundle_jobs_load_into_the_bundle_schemas_typed_models(bundle):
    """The bundle JSON schema ships only inside the Go CLI (`databricks bundle schema`), on no
    package registry; databricks-bundles' Job model is generated from it. Every job loads into
    it (`${var.*}` allowed wherever the schema allows a variable); a misspelt key or a wrong type
    does not, so the check can fail."""
    import copy

    from databricks.bundles.jobs import Job

    for name, job in bundle["resources"]["jobs"].items():
        spec = {k: v for k, v in job.items() if k != "_file"}
        loaded = Job.from_dict(spec)
        assert [t.task_key for t in loaded.tasks] == [t["task_key"] for t in spec["tasks"]], name
    spec = {k: v for k, v in bundle["resources"]["jobs"]["ebbtide_training"].items() if k != "_file"}
    misspelt = copy.deepcopy(spec)
    misspelt["tasks"][0]["tsk_key"] = misspelt["tasks"][0].pop("task_key")
    with pytest.raises(ValueError, match="tsk_key"):
        Job.from_dict(misspelt)
    wrong_type = dict(copy.deepcopy(spec), max_concurrent_runs="one")
    with pytest.raises(ValueError):
        Job.from_dict(wrong_type)


def _resolve(value: str, bundle: dict) -> str:
    return re.sub(r"\$\{var\.([A-Za-z0-9_]+)\}", lambda m: str(bundle["variables"][m.group(1)]["default"]), value)


def test_every_wheel_task_calls_a_real_stage_with_valid_arguments(bundle):
    from ebbtide.cli import STAGES, build_parser

    # The console script the tasks name is the one pyproject declares.
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    n = 0
    for job in bundle["resources"]["jobs"].values():
        for t in job["tasks"]:
            w = t["python_wheel_task"]
            assert w["package_name"] == "ebbtide"
            assert w["entry_point"] in scripts and scripts[w["entry_point"]] == "ebbtide.cli:main"
            params = [_resolve(str(p), bundle) for p in w["parameters"]]
            stage, argv = params[0], params[1:]
            assert stage in STAGES, f"task {t['task_key']}: unknown stage {stage}"
            assert argv[:2] == ["--env", "databricks"]
            # Databricks fills {{job.start_time.iso_date}} in at run time; parse a real date here.
            argv = [a.replace("{{job.start_time.iso_date}}", "2025-03-01") for a in argv]
            args = _parse_stage_args(stage, argv)
            assert args.env == "databricks"
            build_parser().parse_args([stage, "--env", "databricks"])
            n += 1
    assert n == 8


def test_wheel_library_is_what_package_sh_builds(bundle):
    build = bundle["artifacts"]["ebbtide_wheel"]
    art_root = (BUNDLE / build["path"]).resolve()
    assert art_root == ROOT
    assert "scripts/package.sh" in build["build"] and (ROOT / "scripts" / "package.sh").exists()
    assert any(Path(f["source"]).name == "ebbtide-*.whl" and Path(f["source"]).parent.name == "dist" for f in build["files"])
    wheel = _wheel_name()
    for job in bundle["resources"]["jobs"].values():
        for t in job["tasks"]:
            libs = [lib["whl"] for lib in t["libraries"]]
            assert len(libs) == 1
            # Library paths are relative to the resource file that names them.
            target = (job["_file"].parent / libs[0]).resolve()
            assert target.parent == ROOT / "dist", f"{t['task_key']}: {libs[0]} is not under dist/"
            assert fnmatch.fnmatch(wheel, target.name)


def test_databricks_overlay_exists_and_takes_the_platform_session():
    from ebbtide.config import load_config

    assert (ROOT / "conf" / "databricks.yaml").exists()
    cfg = load_config(env="databricks")
    assert cfg.spark.use_platform_session and not cfg.spark.add_delta_jars
    # Checkpoints on the Unity Catalog volume every node mounts; tables named catalog.schema.table.
    root = cfg.path("{root}")
    assert root.startswith("/Volumes/")
    for template in (cfg.storage.checkpoint_dir, cfg.section("train").checkpoint_dir):
        assert cfg.path(template).startswith(root + "/"), template
    assert cfg.storage.database.count(".") == 1 and cfg.section("mlflow").registry_uri == "databricks-uc"


# ------------------------------------------------------------------------------------------
# EMR
# ------------------------------------------------------------------------------------------


def _split_submit(args: list[str]) -> tuple[dict[str, list[str]], str, list[str]]:
    """spark-submit options, the application file, and the application's own arguments."""
    assert args[0] == "spark-submit"
    opts: dict[str, list[str]] = {}
    i = 1
    while i < len(args) and args[i].startswith("--"):
        opts.setdefault(args[i], []).append(args[i + 1])
        i += 2
    return opts, args[i], args[i + 1:]


def test_emr_steps():
    steps = json.loads((EMR / "steps.json").read_text())
    stages = []
    for s in steps:
        assert s["Type"] == "CUSTOM_JAR" and s["Jar"] == "command-runner.jar"
        assert s["ActionOnFailure"] in {"CONTINUE", "CANCEL_AND_WAIT", "TERMINATE_CLUSTER", "TERMINATE_JOB_FLOW"}
        opts, app, argv = _split_submit(s["Args"])
        assert opts["--deploy-mode"] == ["cluster"]
        stage = Path(app).stem
        assert app.endswith(f"/jobs/{stage}.py") and (ROOT / "jobs" / f"{stage}.py").exists(), app
        confs = dict(c.split("=", 1) for c in opts.get("--conf", []))
        py = confs["spark.pyspark.python"]
        assert confs["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == py
        if "--archives" in opts:
            assert opts["--archives"][0].startswith("s3://") and opts["--archives"][0].endswith(".tar.gz#environment")
            assert py == "./environment/bin/python"
        else:
            assert py == "/opt/ebbtide/env/bin/python", f"{stage}: no --archives and not the bootstrapped env"
            assert "/opt/ebbtide/env" in (EMR / "bootstrap.sh").read_text()
        assert confs["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
        args = _parse_stage_args(stage, argv)
        assert args.env == "emr"
        stages.append(stage)
    assert stages == ["ingest", "sessionize", "sequences", "sequences", "train", "evaluate", "score", "monitor"]
    # The nightly workflow updates the changed users' sequences; the weekly one (the steps named
    # so) rebuilds every training example before train, as the Databricks jobs do.
    weekly = [Path(_split_submit(s["Args"])[1]).stem for s in steps if "weekly" in s["Name"]]
    assert weekly == ["sequences", "train", "evaluate"]
    nightly_flags = [_parse_stage_args("sequences", _split_submit(s["Args"])[2]).nightly
                     for s in steps if Path(_split_submit(s["Args"])[1]).stem == "sequences"]
    assert nightly_flags == [True, False]
    train = next(s for s in steps if "train" in s["Name"])
    confs = dict(c.split("=", 1) for c in _split_submit(train["Args"])[0]["--conf"])
    assert confs["spark.task.resource.gpu.amount"] == "1"
    args = _parse_stage_args("train", _split_submit(train["Args"])[2])
    assert (args.warm_start, args.warm_start_if_missing) == ("models:/ebbtide@champion", "scratch")


def test_emr_overlay_loads_and_overrides_parse():
    from ebbtide.config import load_config

    steps = json.loads((EMR / "steps.json").read_text())
    argv = _split_submit(steps[0]["Args"])[2]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(env="emr", overrides=sets)
    root = cfg.path("{root}")
    assert root.startswith("s3://")
    # Every node reaches what the stages store: tables, streaming and training checkpoints.
    for template in (cfg.storage.warehouse_dir, cfg.storage.checkpoint_dir, cfg.section("train").checkpoint_dir):
        assert cfg.path(template).startswith(root + "/"), template
    assert cfg.section("mlflow").tracking_uri.startswith("http")
    assert cfg.spark.use_platform_session


def test_emr_serverless_job_run():
    run = json.loads((EMR / "serverless-start-job-run.json").read_text())
    assert {"applicationId", "executionRoleArn", "jobDriver"} <= set(run)
    sub = run["jobDriver"]["sparkSubmit"]
    stage = Path(sub["entryPoint"]).stem
    assert (ROOT / "jobs" / f"{stage}.py").exists()
    assert stage in {"ingest", "sessionize", "sequences", "score"}, "EMR Serverless has no GPUs: CPU stages only"
    params = sub["sparkSubmitParameters"]
    assert "#environment" in params and "./environment/bin/python" in params
    assert _parse_stage_args(stage, sub["entryPointArguments"]).env == "emr"
    readme = (EMR / "README.md").read_text()
    assert "start-job-run" in readme and "GPU" in readme and "EC2" in readme


def test_emr_bootstrap_is_valid_bash():
    script = EMR / "bootstrap.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "horovod" in text.lower() and "CMAKE_CXX_STANDARD 17" in text and "NCCL" in text


def test_weekly_and_nightly_chains(tmp_path):
    """weekly.sh: sequences (the full rebuild), train as a warm start from the champion (from scratch
    while there is none), then evaluate; nightly.sh: ingest, sessionize, sequences --nightly, score,
    monitor. Checked on the commands a
    dry run prints, each parsed by its stage's real parser."""
    import os
    import shlex

    env = dict(os.environ, EBBTIDE_DRY_RUN="1", EBBTIDE_SUBMIT_MODE="cluster",
               EBBTIDE_ENV_ARCHIVE=str(tmp_path / "env.tar.gz"))
    (tmp_path / "env.tar.gz").write_bytes(b"")
    spark_submit = ROOT / "deploy" / "spark-submit"

    def chain(script: str, *argv: str) -> list[tuple[str, list[str]]]:
        out = subprocess.run([str(spark_submit / script), *argv], env=env, capture_output=True, text=True,
                             check=True).stdout
        cmds = []
        for line in out.splitlines():
            words = shlex.split(line)
            job = next(i for i, w in enumerate(words) if w.endswith(".py") and "/jobs/" in w)
            cmds.append((Path(words[job]).stem, words[job + 1:]))
        return cmds

    weekly = chain("weekly.sh", "--launcher", "horovod")
    assert [stage for stage, _ in weekly] == ["sequences", "train", "evaluate"]
    assert not _parse_stage_args("sequences", weekly[0][1]).nightly
    train = _parse_stage_args("train", weekly[1][1])
    assert (train.warm_start, train.warm_start_if_missing, train.launcher) == (
        "models:/ebbtide@champion", "scratch", "horovod")
    nightly = chain("nightly.sh", "s3://bucket/raw", "2025-03-02")
    assert [stage for stage, _ in nightly] == ["ingest", "sessionize", "sequences", "score", "monitor"]
    assert _parse_stage_args("sequences", nightly[2][1]).nightly
    for stage, argv in weekly + nightly:
        _parse_stage_args(stage, argv)


def test_spark_submit_scripts_cover_every_job():
    for job in sorted((ROOT / "jobs").glob("*.py")):
        if job.stem in {"synth", "sql"}:
            continue
        script = ROOT / "deploy" / "spark-submit" / f"{job.stem}.sh"
        assert script.exists(), f"no spark-submit script for {job.name}"
        subprocess.run(["bash", "-n", str(script)], check=True)
