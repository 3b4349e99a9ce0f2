"""scripts/package.sh, for real: the wheel carries conf/ and loads its config outside the repo;
the venv-pack archive holds the wheel (not the editable checkout) and is cached by content.

The archive test packs a small environment (Python + pyyaml) instead of the several-GB project
environment, through the same script and the same code path (`--venv`)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "package.sh"
PY = ROOT / ".venv" / "bin" / "python"


def _package(*args: str, cache: Path, script: Path = SCRIPT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, EBBTIDE_CACHE=str(cache))
    proc = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"package.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _package("--wheel-only", "--out", str(out), cache=tmp_path_factory.mktemp("cache"))
    (whl,) = out.glob("ebbtide-*-py3-none-any.whl")
    return whl


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (ROOT / "conf").glob("*.yaml"):
        assert f"ebbtide/conf/{f.name}" in names
    assert "ebbtide/cli.py" in names and "ebbtide/config.py" in names
    assert not any(".egg-info" in n or "__pycache__" in n for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    # The runtime's Spark must win on a cluster: pyspark only through the `spark` extra.
    assert 'Requires-Dist: pyspark<4.1,>=4.0; extra == "spark"' in meta
    assert "Requires-Dist: torch" in meta
    # The work tree is left as it was: no conf copy inside lib/.
    assert not (ROOT / "lib" / "ebbtide" / "conf").exists()


def test_installed_wheel_loads_config_outside_the_repo(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import ebbtide, ebbtide.config as c; "
        "print(ebbtide.__file__); print(c.default_conf_dir()); "
        "cfg = c.load_config(env='emr'); print(cfg.env, cfg.spark.use_platform_session, sorted(cfg.extra))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBBTIDE_")}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([str(PY), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    module_file, conf_dir, summary = out.stdout.strip().splitlines()
    assert module_file.startswith(str(target)), "ebbtide was imported from the checkout, not the wheel"
    assert conf_dir == str(target / "ebbtide" / "conf")
    assert summary.startswith("emr True") and "mlflow" in summary


def _tiny_venv(path: Path) -> Path:
    """A real venv with pyyaml (copied in: no network) and nothing else."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (site,) = path.glob("lib/python3*/site-packages")
    import yaml

    src = Path(yaml.__file__).parent
    shutil.copytree(src, site / "yaml")
    for f in src.parent.glob("_yaml*"):
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, site / f.name)
    # An editable install of the checkout, as `make setup` leaves in .venv: it must not be packed.
    (site / "__editable__.ebbtide-0.1.0.pth").write_text(str(ROOT / "lib") + "\n")
    return path


def _snapshot(dest: Path) -> Path:
    """A copy of what package.sh reads, so edits to the checkout during the test cannot change the
    wheel between the two runs below; .venv links to the real environment (the build tools)."""
    for name in ("pyproject.toml", "README.md", "requirements.lock", "overrides.txt"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    for d in ("lib", "conf", "scripts", "deploy/sql"):
        if (ROOT / d).exists():
            shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest / "scripts" / "package.sh"


def test_clean_checkout_runs_setup_first(tmp_path):
    """A checkout without .venv (the Databricks bundle runs package.sh itself, not `make package`):
    package.sh runs scripts/setup.sh, then builds. The snapshot's setup.sh is a stand-in that links
    the real environment, as setup.sh does, instead of building one."""
    (tmp_path / "repo").mkdir()
    script = _snapshot(tmp_path / "repo")
    (tmp_path / "repo" / ".venv").unlink()
    (script.parent / "setup.sh").write_text(
        "#!/usr/bin/env bash\nset -e\nROOT=$(cd \"$(dirname \"$0\")/..\" && pwd)\n"
        f"echo 'stand-in setup ran'\nln -sfn {ROOT / '.venv'} \"$ROOT/.venv\"\n"
    )
    out = tmp_path / "dist"
    proc = _package("--wheel-only", "--out", str(out), cache=tmp_path / "cache", script=script)
    assert "running scripts/setup.sh first" in proc.stdout and "stand-in setup ran" in proc.stdout
    assert len(list(out.glob("ebbtide-*-py3-none-any.whl"))) == 1

    # A setup that fails stops the build with one error line naming it.
    (tmp_path / "repo" / ".venv").unlink()
    (script.parent / "setup.sh").write_text("#!/usr/bin/env bash\necho 'no java' >&2\nexit 1\n")
    env = dict(os.environ, EBBTIDE_CACHE=str(tmp_path / "cache"))
    failed = subprocess.run(["bash", str(script), "--wheel-only", "--out", str(out)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode != 0 and "[package] ERROR: scripts/setup.sh failed" in failed.stderr


@pytest.mark.slow
def test_env_archive_holds_the_wheel_and_is_cached(tmp_path):
    venv = _tiny_venv(tmp_path / "venv")
    cache, out = tmp_path / "cache", tmp_path / "dist"
    (tmp_path / "repo").mkdir()
    script = _snapshot(tmp_path / "repo")
    first = _package("--venv", str(venv), "--out", str(out), cache=cache, script=script)
    link = out / "ebbtide-env.tar.gz"
    assert link.is_symlink() and Path(os.readlink(link)).parent == cache / "dist"
    archive = link.resolve()
    assert "packing with venv-pack" in first.stdout
    assert not list((cache / "dist").glob("stage-*")), "the staging copy was left behind"
    assert (venv / "lib").exists() and list(venv.glob("lib/python3*/site-packages/__editable__.ebbtide*")), \
        "packing changed the source environment"

    with tarfile.open(archive) as tf:
        names = tf.getnames()
        assert not any("__editable__" in n for n in names)
        assert any(n.endswith("site-packages/ebbtide/conf/base.yaml") for n in names)
        assert any(n.endswith("site-packages/ebbtide/cli.py") for n in names)
        unpacked = tmp_path / "environment"
        tf.extractall(unpacked)
    # What an executor does with `--archives ...#environment`: run the archive's Python.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EBBTIDE_", "PYTHON"))}
    code = "import ebbtide.config as c; cfg = c.load_config(env='emr'); print(c.__file__); print(cfg.storage.database)"
    run = subprocess.run([str(unpacked / "bin" / "python"), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(unpacked)) and run.stdout.splitlines()[1] == "ebbtide"

    again = _package("--venv", str(venv), "--out", str(out), cache=cache, script=script)
    assert "environment archive up to date" in again.stdout
    assert link.resolve() == archive
