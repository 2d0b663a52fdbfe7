"""`tickwire validate` where users run it: GitHub annotations, JSON, and a pre-commit hook."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tickwire.framework.documents import Mark, Problem
from tickwire.framework.report_formats import github_annotation

REPO = Path(__file__).resolve().parent.parent


def validate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TICKWIRE_CONFIG"}
    return subprocess.run([sys.executable, "-m", "tickwire", "validate", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def broken_project(tmp_path: Path) -> Path:
    """The default project with two mistakes: a misspelt sink type (line 56), batch_size -5 (line 78)."""
    subprocess.run([sys.executable, "-m", "tickwire", "init", str(tmp_path)], check=True, capture_output=True)
    config = tmp_path / "streams.yaml"
    text = config.read_text().replace("    type: jsonl", "    type: jsnl").replace("batch_size: 1000", "batch_size: -5")
    config.write_text(text)
    lines = text.splitlines()
    assert lines[55].strip() == "type: jsnl" and lines[77].strip() == "batch_size: -5"
    return tmp_path


def test_github_format_annotates_the_offending_lines(tmp_path):
    result = validate("--format", "github", cwd=broken_project(tmp_path))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "::error file=streams.yaml,line=56,col=11,title=tickwire validate::sinks.dead-letter-file.type: unknown sink "
        "type 'jsnl' (installed: jsonl, kafka, postgres, sqlite; did you mean 'jsonl'?); see `tickwire plugins`",
        "::error file=streams.yaml,line=78,col=15,title=tickwire validate::engine.batch_size: -5 is less than the minimum of 1",
    ]
    assert "2 problems found" in result.stderr and "Traceback" not in result.stderr


def test_json_format_is_a_list_of_problems_on_stdout(tmp_path):
    project = broken_project(tmp_path)
    result = validate("--format", "json", cwd=project)
    assert result.returncode == 2
    assert json.loads(result.stdout) == [
        {"file": "streams.yaml", "line": 56, "col": 11, "path": "sinks.dead-letter-file.type",
         "reason": "unknown sink type 'jsnl' (installed: jsonl, kafka, postgres, sqlite; did you mean 'jsonl'?); "
                   "see `tickwire plugins`"},
        {"file": "streams.yaml", "line": 78, "col": 15, "path": "engine.batch_size", "reason": "-5 is less than the minimum of 1"},
    ]
    subprocess.run([sys.executable, "-m", "tickwire", "init", "--force", str(project)], check=True, capture_output=True)
    clean = validate("--format", "json", cwd=project)
    assert clean.returncode == 0 and json.loads(clean.stdout) == []  # the "ok" lines go to stderr


def test_github_annotation_escapes_what_would_end_the_command():
    problem = Problem(Mark("conf, v2/streams.yaml", 3, 1), "a", "50% off\nnext line")
    assert github_annotation(problem) == (
        "::error file=conf%2C v2/streams.yaml,line=3,col=1,title=tickwire validate::a: 50%25 off%0Anext line")
    override = Problem(Mark("--set engine.linger_ms=x", 0, 0), "engine.linger_ms", "'x' is not of type 'integer'")
    assert github_annotation(override) == (
        "::error title=tickwire validate::--set engine.linger_ms=x: engine.linger_ms: 'x' is not of type 'integer'")


def test_the_pre_commit_hook_runs_the_installed_validate_command():
    [hook] = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "tickwire-validate" and hook["language"] == "python" and hook["pass_filenames"] is False
    command, *args = hook["entry"].split()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert command in scripts and args == ["validate"]
    watched = re.compile(hook["files"])
    for path in ("streams.yaml", "config/streams.yml", "schemas/trade.schema.json", "tests/samples/trade.jsonl"):
        assert watched.search(path), path
    assert not watched.search("src/app.py")
