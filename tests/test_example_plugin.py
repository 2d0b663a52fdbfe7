"""The third-party example under examples/tickwire-example-sink, installed as a user would:
tickwire (this checkout, not editable) and the example into a fresh venv. `tickwire plugins`
lists it, a run writes its CSV files, and its own tests pass using nothing but the author kit
that tickwire's pytest11 entry point registers — from a folder outside this repository."""

from __future__ import annotations

import csv
import shutil

import pytest

from tests.test_install import REPO, Venv, simulated_run

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

EXAMPLE = REPO / "examples" / "tickwire-example-sink"


@pytest.fixture(scope="module")
def example_venv(tmp_path_factory) -> Venv:
    env = Venv(tmp_path_factory.mktemp("example-venv"))
    env.pip_install(str(REPO), str(EXAMPLE), "pytest>=8", "hypothesis>=6.100")
    return env


def test_tickwire_plugins_lists_the_example(example_venv, tmp_path):
    listing = example_venv.run("tickwire", "plugins", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "example-csv        tickwire-example-sink 0.1.0" in listing.stdout
    assert "sink      csv  CSV files, one per stream, plus dead_letters.csv (append-only)" in listing.stdout
    assert "transform only_symbols  Keep only the payloads of the listed symbols" in listing.stdout


def test_a_run_writes_the_csv_files(example_venv, tmp_path, simulator):
    project = tmp_path / "project"
    assert example_venv.run("tickwire", "init", str(project), cwd=tmp_path).returncode == 0
    sim = simulator(rate=200, symbols="BTCUSDT")
    run = simulated_run(example_venv, project, sim, "--set", "sinks.csv={type: csv, directory: out}",
                        "--set", "profiles.local.sinks=[csv]")
    assert run.returncode == 0, run.stderr[-3000:]
    with open(project / "out" / "trades.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 100 and {r["symbol"] for r in rows} == {"BTCUSDT"}
    trades = {t["id"]: t for t in sim.trades("BTCUSDT")}
    for row in rows:  # the exact decimal text the simulator sent
        assert row["price"] == trades[int(row["trade_id"])]["price"]


def test_the_examples_own_tests_pass_with_the_kit_from_the_pytest11_entry_point(example_venv, tmp_path):
    tests = shutil.copytree(EXAMPLE / "tests", tmp_path / "tests")  # outside the repository: no conftest of ours
    result = example_venv.run("python", "-m", "pytest", "-v", "-p", "no:cacheprovider", str(tests), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "tickwire plugin kit: tickwire 0.1.0" in result.stdout  # the kit's pytest plugin is loaded
    assert "TestCsvSink::test_reopen_keeps_data PASSED" in result.stdout
    assert "TestOnlySymbols::test_any_json_is_a_record_or_invalid_record PASSED" in result.stdout
    assert "10 passed" in result.stdout


def test_every_file_the_tutorial_links_exists():
    import re

    doc = REPO / "docs" / "plugins.md"
    links = re.findall(r"\]\((\.\./[^)#]+)\)", doc.read_text())
    assert len(links) >= 5
    for link in links:
        assert (doc.parent / link).exists(), f"docs/plugins.md links {link}, which does not exist"
