"""`tickwire init`: a project directory for someone who installed tickwire with pip or pipx."""

from __future__ import annotations

import importlib.resources
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Editors with the YAML language server read the schema from this comment (on any line).
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)")


def tickwire(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TICKWIRE_CONFIG"}  # the streams.yaml of cwd
    return subprocess.run([sys.executable, "-m", "tickwire", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_the_packaged_defaults_are_the_repository_files():
    shipped = importlib.resources.files("tickwire")
    assert (shipped / "streams.yaml").read_text() == (REPO / "streams.yaml").read_text()
    packaged = {entry.name: entry.read_bytes() for entry in (shipped / "schemas").iterdir()}
    in_repo = {path.name: path.read_bytes() for path in (REPO / "schemas").glob("*.json")}
    assert packaged == in_repo


def test_streams_yaml_names_its_schema_for_editors():
    first_line = (REPO / "streams.yaml").read_text().splitlines()[0]
    match = MODELINE.match(first_line)
    assert match, first_line
    assert (REPO / match.group(1)).is_file()


def test_init_writes_a_project_that_validates_at_once(tmp_path):
    project = tmp_path / "my-streams"
    result = tickwire("init", str(project), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (project / "streams.yaml").read_text() == (REPO / "streams.yaml").read_text()  # same text and comments
    modeline = MODELINE.match((project / "streams.yaml").read_text().splitlines()[0])
    assert (project / modeline.group(1)).is_file()
    assert {p.name for p in (project / "schemas").iterdir()} == {p.name for p in (REPO / "schemas").glob("*.json")}
    env_example = (project / ".env.example").read_text()
    assert "TICKWIRE_SQLITE_PATH=data/tickwire.db" in env_example and "# TICKWIRE_PG_DSN=" in env_example
    assert "tickwire validate" in (project / "README.md").read_text()

    validate = tickwire("validate", cwd=project)
    assert validate.returncode == 0, validate.stderr
    assert "streams.yaml: ok (3 streams" in validate.stdout


def test_init_refuses_to_overwrite_unless_forced(tmp_path):
    assert tickwire("init", cwd=tmp_path).returncode == 0
    (tmp_path / "streams.yaml").write_text("# mine\n")
    again = tickwire("init", cwd=tmp_path)
    assert again.returncode == 1 and "nothing was written; pass --force" in again.stderr
    assert f"{Path('.') / 'streams.yaml'}: exists" in again.stderr
    assert (tmp_path / "streams.yaml").read_text() == "# mine\n"

    forced = tickwire("init", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "streams.yaml").read_text() == (REPO / "streams.yaml").read_text()
