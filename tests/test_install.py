"""The three ways in, installed for real into fresh virtual environments (marker ``install``):

* the checkout with run-time dependencies only (``pip install .``, no extras): validate, a run
  against the simulator into SQLite, and the extras it lacks reported, not crashing;
* the sdist and wheel of ``python -m build``, checked by ``twine check``: the wheel holds the
  ``tickwire`` package and nothing else, installs into a clean venv, and works from an empty
  directory outside the repository after ``tickwire init``;
* the editable install every other test runs on (``make setup``).

The venvs are made once per session; pip's cache keeps it to about a minute.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent


class Venv:
    """A fresh virtual environment and how to run its commands."""

    def __init__(self, root: Path):
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        self.root = root
        self.bin = root / "bin"

    def pip_install(self, *what: str) -> None:
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        result = subprocess.run([str(self.bin / "python"), "-m", "pip", "install", "-q", *what],
                                capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        # nothing about folders shadowing the package: nothing is named like it but itself
        assert "precedence during imports" not in result.stdout + result.stderr

    def run(self, *args: str, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """A command of this venv (``tickwire …``, ``python …``), with a clean environment."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("TICKWIRE_", "PYTHON", "VIRTUAL_ENV"))}
        clean["PATH"] = f"{self.bin}{os.pathsep}{clean.get('PATH', '')}"
        return subprocess.run([str(self.bin / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                              env={**clean, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="session")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel, built as a release would be, and checked by twine."""
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    [sdist], [wheel] = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="session")
def wheel_venv(dists, tmp_path_factory) -> Venv:
    env = Venv(tmp_path_factory.mktemp("wheel-venv"))
    env.pip_install(str(dists["wheel"]))
    return env


@pytest.fixture(scope="session")
def runtime_venv(tmp_path_factory) -> Venv:
    """The checkout installed with its run-time dependencies only (no extras)."""
    env = Venv(tmp_path_factory.mktemp("runtime-venv"))
    env.pip_install(str(REPO))
    return env


def simulated_run(env: Venv, cwd: Path, sim, *extra: str) -> subprocess.CompletedProcess:
    return env.run("tickwire", "run", "--duration", "4", "--no-status", "--log-format", "json",
                   "--set", f"sources.binance.url={sim.ws_url}", "--set", f"sources.binance.rest_url={sim.rest_url}",
                   "--set", "symbols=[BTCUSDT]", "--set", "metrics.port=0", *extra, cwd=cwd, timeout=120)


def stored_trades(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from trades").fetchone()[0]


def package_dirs() -> dict[str, str]:
    """Import package → folder of the repository, as pyproject.toml maps them."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools.get("package-dir", {})

    def folder(package: str) -> str:
        for prefix in sorted(mapping, key=len, reverse=True):
            if package == prefix or package.startswith(prefix + "."):
                return "/".join([mapping[prefix], *package[len(prefix):].strip(".").split(".")]).strip("/")
        return package.replace(".", "/")

    return {package: folder(package) for package in setuptools["packages"]}


def test_the_wheel_holds_the_tickwire_package_and_nothing_else(dists):
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"tickwire"}


def test_every_module_and_data_file_of_the_repository_is_in_the_wheel(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    folders = package_dirs()
    expected = set()
    for package, folder in folders.items():
        for path in (REPO / folder).iterdir():
            if path.suffix == ".py" or path.name in ("metrics.properties", "pom.xml", "streams.yaml") or (
                    path.suffix == ".json" and package.endswith("schemas")):
                expected.add(f"{package.replace('.', '/')}/{path.name}")
    assert expected - names == set()
    # every folder with an __init__.py under the packaged folders is a listed package
    for folder in set(folders.values()):
        for init in (REPO / folder).rglob("__init__.py"):
            assert str(init.parent.relative_to(REPO)) in folders.values(), f"{init.parent} is not in packages"


def test_run_time_dependencies_only_validate_and_run_against_the_simulator(runtime_venv, tmp_path, simulator):
    validate = runtime_venv.run("tickwire", "validate", cwd=REPO)
    assert validate.returncode == 0, validate.stderr
    sim = simulator(rate=200, symbols="BTCUSDT")
    db = tmp_path / "local.db"
    run = simulated_run(runtime_venv, REPO, sim, "--set", f"sinks.sqlite.path={db}",
                        "--set", f"sinks.dead-letter-file.path={tmp_path / 'dead.jsonl'}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert stored_trades(db) > 100


def test_run_time_dependencies_only_missing_extras_are_reported_not_fatal(runtime_venv):
    listing = runtime_venv.run("tickwire", "plugins", cwd=REPO)
    assert listing.returncode == 0, listing.stderr
    assert "unavailable: sink 'postgres' needs psycopg, which is not installed; " \
           "install it with: pip install 'tickwire[postgres]'" in listing.stdout
    run = runtime_venv.run("tickwire", "run", "--profile", "postgres", cwd=REPO)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "needs psycopg, which is not installed; install it with: pip install 'tickwire[postgres]'" in run.stderr


def test_the_wheel_works_in_a_directory_of_the_users_own(wheel_venv, tmp_path, simulator):
    project = tmp_path / "my-project"
    assert wheel_venv.run("tickwire", "init", str(project), cwd=tmp_path).returncode == 0
    validate = wheel_venv.run("tickwire", "validate", cwd=project)
    assert validate.returncode == 0, validate.stderr
    ddl = wheel_venv.run("tickwire", "generate", "postgres", cwd=project)
    assert ddl.returncode == 0 and "CREATE TABLE IF NOT EXISTS" in ddl.stdout, ddl.stderr
    sim = simulator(rate=200, symbols="BTCUSDT")
    run = simulated_run(wheel_venv, project, sim)
    assert run.returncode == 0, run.stderr[-3000:]
    assert stored_trades(project / "data" / "tickwire.db") > 100


def test_the_wheel_installs_one_import_name(wheel_venv, tmp_path):
    for generic in ("framework", "plugins", "spark"):
        result = wheel_venv.run("python", "-c", f"import {generic}", cwd=tmp_path)
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, generic
    api = wheel_venv.run("python", "-c", "from tickwire import SinkSpec, hookimpl, InvalidRecord, DeadLetter, "
                         "RunContext, SinkConformance; import tickwire.plugins.kafka.sink", cwd=tmp_path)
    assert api.returncode == 0, api.stderr
    version = wheel_venv.run("python", "-m", "tickwire", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("tickwire, version ")
