"""Schema evolution in CI: `tickwire validate` compares the schemas with the committed
schemas.lock.json (or a git revision) and refuses breaking changes at their line, like a schema
registry in BACKWARD mode. Every scenario runs the real CLI on a temporary copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tickwire.framework.schema_lock import LOCK_FILE, fingerprint, read_lock
from tickwire.framework.schemas import StreamSpec, TopicSpec
from tickwire.plugins.kafka.encoding import RecordEncoder

REPO = Path(__file__).resolve().parent.parent
TRADE = "schemas/trade.schema.json"


def tickwire(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TICKWIRE_CONFIG"}
    return subprocess.run([sys.executable, "-m", "tickwire", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The repository's streams.yaml, schemas and lock file, in a folder of its own."""
    shutil.copy(REPO / "streams.yaml", tmp_path / "streams.yaml")
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    shutil.copy(REPO / LOCK_FILE, tmp_path / LOCK_FILE)
    return tmp_path


def edit_schema(project: Path, change, name: str = TRADE) -> str:
    """Apply ``change`` to the parsed schema, write it back; returns the new text."""
    path = project / name
    schema = json.loads(path.read_text())
    change(schema)
    text = json.dumps(schema, indent=2) + "\n"
    path.write_text(text)
    return text


def line_of(text: str, needle: str, after: str = "") -> int:
    start = text.index(after) if after else 0
    return text[: text.index(needle, start)].count("\n") + 1


def add_optional_best_match(schema: dict) -> None:
    schema["properties"]["M"]["x-tickwire"] = {"column": "best_match", "type": "boolean"}


def assert_breaking(result: subprocess.CompletedProcess, where: str, *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(where)]
    assert lines, result.stderr
    for word in words + ("breaking against", "x-tickwire.version"):
        assert word in lines[0], lines[0]


def test_the_repository_validates_against_its_committed_lock() -> None:
    result = tickwire("validate", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "schemas: unchanged since schemas.lock.json" in result.stdout


def test_the_committed_lock_is_what_schema_lock_writes(project: Path) -> None:
    result = tickwire("schema", "lock", cwd=project)
    assert result.returncode == 0 and "up to date (3 streams)" in result.stdout, result.stdout + result.stderr
    assert (project / LOCK_FILE).read_text() == (REPO / LOCK_FILE).read_text()


def test_adding_an_optional_field_is_a_note_and_schema_lock_records_it(project: Path) -> None:
    text = edit_schema(project, add_optional_best_match)
    result = tickwire("validate", cwd=project)
    assert result.returncode == 0, result.stderr
    line = line_of(text, '"M": {')
    assert f"note: {TRADE}:{line}:" in result.stdout
    assert "adds optional column 'best_match' (boolean)" in result.stdout
    assert "record them with `tickwire schema lock`" in result.stdout

    locked = tickwire("schema", "lock", cwd=project)
    assert locked.returncode == 0 and "wrote schemas.lock.json" in locked.stdout
    trade = read_lock(project / LOCK_FILE)["trade"]
    assert {"name": "best_match", "field": "M", "type": "boolean", "nullable": True} in trade["columns"]
    again = tickwire("validate", cwd=project)
    assert again.returncode == 0 and "schemas: unchanged since schemas.lock.json" in again.stdout


def test_adding_a_required_field_is_breaking(project: Path) -> None:
    def change(schema):
        add_optional_best_match(schema)
        schema["required"].append("M")

    text = edit_schema(project, change)
    line = line_of(text, '"M"', after='"required"')
    assert_breaking(tickwire("validate", cwd=project), f"{TRADE}:{line}:", "required[8]", "adds required column 'best_match'")


def test_dropping_a_field_is_breaking(project: Path) -> None:
    def change(schema):
        schema["required"].remove("m")
        del schema["properties"]["m"]

    text = edit_schema(project, change)
    line = line_of(text, '"properties": {')
    assert_breaking(tickwire("validate", cwd=project), f"{TRADE}:{line}:", "column 'buyer_is_maker' (field 'm') removed")


def test_changing_a_type_is_breaking_at_the_type(project: Path) -> None:
    text = edit_schema(project, lambda s: s["properties"]["q"]["x-tickwire"].update(type="text"))
    line = line_of(text, '"type": "text"', after='"q": {')
    assert_breaking(tickwire("validate", cwd=project), f"{TRADE}:{line}:", "properties.q.x-tickwire.type",
                    "column 'quantity' changes type decimal -> text")


def test_changing_the_key_is_breaking(project: Path) -> None:
    text = edit_schema(project, lambda s: s["x-tickwire"].update(primary_key=["symbol", "trade_id", "trade_time"]))
    line = line_of(text, '"primary_key"')
    assert_breaking(tickwire("validate", cwd=project), f"{TRADE}:{line}:", "x-tickwire.primary_key",
                    "primary key changes (symbol, trade_id) -> (symbol, trade_id, trade_time)")


def test_making_an_optional_field_required_is_breaking(project: Path) -> None:
    edit_schema(project, add_optional_best_match)
    assert tickwire("schema", "lock", cwd=project).returncode == 0
    text = edit_schema(project, lambda s: s["required"].append("M"))
    line = line_of(text, '"M"', after='"required"')
    assert_breaking(tickwire("validate", cwd=project), f"{TRADE}:{line}:", "column 'best_match' (field 'M') made required")


def test_renaming_a_column_is_breaking(project: Path) -> None:
    text = edit_schema(project, lambda s: s["properties"]["m"]["x-tickwire"].update(column="maker_is_buyer"))
    line = line_of(text, '"maker_is_buyer"')
    assert_breaking(tickwire("validate", cwd=project), f"{TRADE}:{line}:", "renamed to 'maker_is_buyer'")


def test_a_breaking_change_is_accepted_as_a_new_version_with_a_migration(project: Path) -> None:
    def change(schema):
        schema["required"].remove("m")
        del schema["properties"]["m"]
        schema["x-tickwire"].update(version=2, migration="migrations/trade-v2.sql")

    text = edit_schema(project, change)
    refused = tickwire("validate", cwd=project)  # the file is not there yet
    line = line_of(text, '"migration"')
    assert refused.returncode == 2
    assert f"{TRADE}:{line}:" in refused.stderr and "migration file 'migrations/trade-v2.sql' not found" in refused.stderr

    (project / "migrations").mkdir()
    (project / "migrations/trade-v2.sql").write_text("ALTER TABLE trades DROP COLUMN buyer_is_maker;\n")
    accepted = tickwire("validate", cwd=project)
    assert accepted.returncode == 0, accepted.stderr
    assert "removed — accepted: version 1 -> 2 with migration migrations/trade-v2.sql" in accepted.stdout
    assert tickwire("schema", "lock", cwd=project).returncode == 0
    assert read_lock(project / LOCK_FILE)["trade"]["version"] == 2


def test_a_new_version_without_a_migration_is_still_breaking(project: Path) -> None:
    def change(schema):
        schema["properties"]["q"]["x-tickwire"]["type"] = "text"
        schema["x-tickwire"]["version"] = 2

    edit_schema(project, change)
    assert_breaking(tickwire("validate", cwd=project), TRADE, "changes type decimal -> text")


def test_schema_lock_refuses_breaking_changes_unless_forced(project: Path) -> None:
    edit_schema(project, lambda s: s["properties"]["q"]["x-tickwire"].update(type="text"))
    before = (project / LOCK_FILE).read_text()
    refused = tickwire("schema", "lock", cwd=project)
    assert refused.returncode == 2 and "not written" in refused.stderr and "changes type decimal -> text" in refused.stderr
    assert (project / LOCK_FILE).read_text() == before
    forced = tickwire("schema", "lock", "--force", cwd=project)
    assert forced.returncode == 0 and tickwire("validate", cwd=project).returncode == 0


def test_validate_against_a_git_revision(project: Path) -> None:
    git = lambda *args: subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "empty")
    git("add", "-A")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "project")
    (project / LOCK_FILE).unlink()  # --against does not need the lock
    edit_schema(project, lambda s: s["x-tickwire"].update(primary_key=["symbol", "trade_id", "trade_time"]))
    result = tickwire("validate", "--against", "HEAD", cwd=project)
    assert_breaking(result, TRADE, "breaking against git HEAD", "primary key changes")

    # the first commit has no streams.yaml: a clear error, not a traceback
    missing = tickwire("validate", "--against", "HEAD~1", cwd=project)
    assert missing.returncode == 2 and "--against HEAD~1: git cannot show streams.yaml at HEAD~1" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = tickwire("validate", "--against", "no-such-ref", cwd=project)
    assert bad.returncode == 2 and "git cannot show" in bad.stderr


def test_without_a_lock_file_changes_are_not_checked_and_validate_says_so(project: Path) -> None:
    (project / LOCK_FILE).unlink()
    edit_schema(project, lambda s: s["properties"]["q"]["x-tickwire"].update(type="text"))
    result = tickwire("validate", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "no schemas.lock.json: schema changes are not checked; `tickwire schema lock` writes it" in result.stdout


def test_a_damaged_lock_file_is_reported_at_its_line(project: Path) -> None:
    lock = project / LOCK_FILE
    lock.write_text(lock.read_text().replace('"version": 1', '"version": "one"', 1))
    result = tickwire("validate", cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{LOCK_FILE}:7:" in result.stderr and "damaged lock file" in result.stderr


def test_breaking_changes_in_the_json_report(project: Path) -> None:
    edit_schema(project, lambda s: s["properties"]["q"]["x-tickwire"].update(type="text"))
    result = tickwire("validate", "--format", "json", cwd=project)
    assert result.returncode == 2
    [problem] = json.loads(result.stdout)
    assert problem["file"] == TRADE and problem["path"] == "properties.q.x-tickwire.type"


def test_the_fingerprint_ignores_formatting_and_documentation(project: Path) -> None:
    schema = json.loads((project / TRADE).read_text())
    edited = json.loads(json.dumps(schema))
    edited["description"] = "reworded"
    edited["properties"]["p"]["description"] = "reworded too"
    assert fingerprint(edited) == fingerprint(schema)
    edited["properties"]["p"]["pattern"] = "^[0-9]+$"
    assert fingerprint(edited) != fingerprint(schema)


def test_kafka_records_carry_the_locked_fingerprint() -> None:
    schema = json.loads((REPO / TRADE).read_text())
    stream = StreamSpec("trade", "binance", "{symbol}@trade", ["BTCUSDT"], REPO / TRADE, schema, "trades",
                        TopicSpec("binance.trades"), [])
    encoder = RecordEncoder("sink 'kafka'", {})
    encoder.declare(stream)
    [[message]] = encoder.messages(stream, [{"symbol": "BTCUSDT", "trade_id": 1, "ingested_at": "x"}]).values()
    headers = dict(message[3])
    assert headers["tickwire-schema-fingerprint"].decode() == read_lock(REPO / LOCK_FILE)["trade"]["fingerprint"]
    assert headers["tickwire-schema-version"] == b"1"


def test_a_bad_sample_and_a_breaking_change_are_reported_together(project: Path) -> None:
    (project / "tests/samples").mkdir(parents=True)
    (project / "tests/samples/trade.jsonl").write_text("not json\n")
    edit_schema(project, lambda s: s["properties"]["q"]["x-tickwire"].update(type="text"))
    result = tickwire("validate", cwd=project)
    assert result.returncode == 2 and "2 problems found" in result.stderr, result.stderr
    assert "tests/samples/trade.jsonl:1:1: trade: not JSON" in result.stderr
    assert "changes type decimal -> text" in result.stderr
