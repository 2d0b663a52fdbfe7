"""Is a schema change safe? The working schemas against the lock file (or a git revision),
classified like Confluent Schema Registry's BACKWARD mode (docs/schema-evolution.md).

Compatible (a note; ``tickwire db migrate`` and the SQLite sink apply it in place): a new
optional column, a required field made optional, a new stream, documentation edits.

Breaking (a problem at the line of the working schema, exit 2): a column removed or renamed, its
type or its source field changed, a field made required or a new required one, a changed primary
key, Kafka key, event-time column or table, a version that went backwards. A breaking change is
accepted when the stream's schema declares a new version (``x-tickwire.version`` above the
locked one) with a migration (``x-tickwire.migration``: a SQL file, relative to the project
folder, that ``tickwire db migrate`` runs to bring the table to the new shape).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from tickwire.framework import documents
from tickwire.framework.documents import DocumentError, Problem, dotted
from tickwire.framework.schema_lock import LOCK_FILE, config_entries, display_path, lock_entry, lock_path, nowhere, read_lock
from tickwire.framework.schemas import ANNOTATION

GIT_TIMEOUT_S = 20


@dataclass(frozen=True)
class Change:
    """One difference between the locked and the working schema of a stream."""

    stream: str
    breaking: bool
    at: tuple  # where in the working schema (or in streams.yaml when ``in_config``)
    what: str
    todo: str = ""
    in_config: bool = False


@dataclass
class Report:
    """What ``tickwire validate`` says about schema evolution."""

    baseline: str  # "schemas.lock.json", "git main"
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    changed: bool = False  # the lock no longer matches the schemas


def changes(stream: str, old: dict, new: dict, schema: dict) -> list[Change]:
    """Every difference between two lock entries of ``stream``; ``schema`` is the working
    schema, to point at the right place in it."""
    out: list[Change] = []
    old_cols = {c["name"]: c for c in old["columns"]}
    new_cols = {c["name"]: c for c in new["columns"]}
    required = list(schema.get("required", []))

    def required_at(field_name: str) -> tuple:
        return ("required", required.index(field_name)) if field_name in required else ("properties", field_name)

    renamed_to = {}
    for name, column in old_cols.items():
        if name in new_cols:
            continue
        successor = next((c for c in new_cols.values() if c["field"] == column["field"] and c["name"] not in old_cols), None)
        if successor is not None:
            renamed_to[successor["name"]] = name
            out.append(Change(stream, True, ("properties", column["field"], ANNOTATION, "column"),
                              f"column '{name}' renamed to '{successor['name']}'",
                              "readers and tables still use the old name; keep the old column name"))
        else:
            at = ("properties", column["field"]) if column["field"] in schema.get("properties", {}) else ("properties",)
            out.append(Change(stream, True, at, f"column '{name}' (field '{column['field']}') removed",
                              "existing rows and readers still have it; keep the field (make it optional if "
                              "the source stopped sending it)"))
    for name, column in new_cols.items():
        if name in renamed_to:
            continue
        before = old_cols.get(name)
        if before is None:
            if column["nullable"]:
                out.append(Change(stream, False, ("properties", column["field"]),
                                  f"adds optional column '{name}' ({column['type']}); rows written before hold NULL"))
            else:
                out.append(Change(stream, True, required_at(column["field"]),
                                  f"adds required column '{name}' (field '{column['field']}')",
                                  "records and rows of the previous version lack it; leave the field out of "
                                  "'required' (an optional column)"))
            continue
        annotation = ("properties", column["field"], ANNOTATION)
        if column["type"] != before["type"]:
            out.append(Change(stream, True, annotation + ("type",),
                              f"column '{name}' changes type {before['type']} -> {column['type']}",
                              "stored rows and readers have the old type; add a new column of the new type instead"))
        if column["field"] != before["field"]:
            out.append(Change(stream, True, annotation + ("column",),
                              f"column '{name}' now comes from field '{column['field']}' (was '{before['field']}'): "
                              "same name, different meaning",
                              "store the new field in a new column"))
        if before["nullable"] and not column["nullable"]:
            out.append(Change(stream, True, required_at(column["field"]),
                              f"column '{name}' (field '{column['field']}') made required",
                              "rows and records of the previous version may lack it; keep it optional"))
        elif column["nullable"] and not before["nullable"]:
            out.append(Change(stream, False, ("properties", column["field"]),
                              f"column '{name}' made optional (`tickwire db migrate` drops its NOT NULL)"))
    for key, label in (("primary_key", "primary key"), ("kafka_key", "Kafka key"), ("event_time", "event-time column")):
        if old.get(key) != new.get(key):
            shown = lambda v: ", ".join(v) if isinstance(v, list) else str(v)  # noqa: E731
            out.append(Change(stream, True, (ANNOTATION, key) if key in schema.get(ANNOTATION, {}) else (ANNOTATION,),
                              f"{label} changes ({shown(old.get(key))}) -> ({shown(new.get(key))})",
                              "stored rows are keyed the old way; a new key needs a new table"))
    if old["table"] != new["table"]:
        out.append(Change(stream, True, ("streams", stream, "table"),
                          f"table changes {old['table']} -> {new['table']}",
                          "the rows stay in the old table; rename the table in the database first", in_config=True))
    if new["version"] < old["version"]:
        out.append(Change(stream, True, (ANNOTATION, "version"),
                          f"version goes back from {old['version']} to {new['version']}", "versions only go up"))
    return out


def check(config, against: str | None = None) -> Report:
    """The working schemas of ``config`` against the lock file, or against git revision
    ``against`` (its streams.yaml and schemas, read with ``git show``)."""
    working = config_entries(config)
    if against is None:
        path = lock_path(config)
        locked = read_lock(path)
        report = Report(display_path(path))
        if locked is None:
            report.notes.append(f"no {LOCK_FILE}: schema changes are not checked; `tickwire schema lock` writes it "
                                "(commit it)")
            return report
    else:
        locked = entries_at_revision(config, against)
        report = Report(f"git {against}")
    for name in sorted(set(locked) - set(working)):
        report.changed = True
        report.notes.append(f"stream '{name}' is in {report.baseline} but not in streams.yaml (its table "
                            f"{locked[name]['table']} stays)")
    for name, entry in working.items():
        schema_doc = config.stream_schemas[name]
        old = locked.get(name)
        if old is None:
            report.changed = True
            report.notes.append(f"{schema_doc.file}: new stream '{name}' (compatible)")
            continue
        if old["fingerprint"] == entry["fingerprint"] and old["table"] == entry["table"]:
            continue
        report.changed = True
        found = changes(name, old, entry, schema_doc.data)
        if not found:
            report.notes.append(f"{schema_doc.file}: stream '{name}': validation rules changed "
                                f"({old['fingerprint']} -> {entry['fingerprint']}), stored columns unchanged")
        _classify(config, name, old, entry, found, report)
    return report


def _classify(config, name: str, old: dict, new: dict, found: list[Change], report: Report) -> None:
    schema_doc = config.stream_schemas[name]
    note = schema_doc.data.get(ANNOTATION, {})
    migration = note.get("migration")
    migration_ok = isinstance(migration, str) and config.resolve_path(migration).is_file()
    if isinstance(migration, str) and not migration_ok:
        at = (ANNOTATION, "migration")
        report.problems.append(Problem(schema_doc.mark(at), dotted(at), f"stream '{name}': migration file "
                                       f"'{migration}' not found (relative to {display_path(config.dir) or '.'})"))
    accepted = new["version"] > old["version"] and migration_ok
    for change in found:
        if not change.breaking:
            report.notes.append(f"{schema_doc.mark(change.at)}: stream '{name}': {change.what}")
        elif accepted:
            report.notes.append(f"{schema_doc.mark(change.at)}: stream '{name}': {change.what} — accepted: version "
                                f"{old['version']} -> {new['version']} with migration {migration}")
        else:
            doc = config.doc if change.in_config else schema_doc
            accept = (f"or accept it as a new version: set x-tickwire.version to {old['version'] + 1} and "
                      "x-tickwire.migration to a SQL file that migrates the table (docs/schema-evolution.md)")
            report.problems.append(Problem(doc.mark(change.at), dotted(change.at),
                                           f"stream '{name}': {change.what} — breaking against {report.baseline}: "
                                           f"{change.todo}; {accept}"))


# -- the baseline from git ---------------------------------------------------------------------


class _Defaults(dict):
    """The environment for reading an old streams.yaml: unset variables read as empty, since
    only the streams' schema and table are used."""

    def get(self, key, default=None):
        return os.environ.get(key, "")


def entries_at_revision(config, revision: str) -> dict[str, dict]:
    """Lock entries of the streams of ``config``'s file as it was at git ``revision``."""
    where = nowhere(f"--against {revision}")
    if revision.startswith("-"):
        raise DocumentError([Problem(where, "", "a git revision cannot start with '-'")])
    config_name = config.path.name
    text = _git_show(config, revision, config_name)
    try:
        doc = documents.loads(text, f"{revision}:{config_name}", environ=_Defaults())
    except DocumentError as exc:
        raise DocumentError([Problem(p.mark, p.path, f"{p.reason} (the config at {revision})") for p in exc.problems]) from None
    streams = doc.data.get("streams") if isinstance(doc.data, dict) else None
    out = {}
    for name, block in (streams or {}).items():
        if not isinstance(block, dict) or not isinstance(block.get("schema"), str):
            continue
        ref = block["schema"]
        try:
            schema = documents.loads(_git_show(config, revision, ref), f"{revision}:{ref}", environ={}).data
            out[name] = lock_entry(ref, str(block.get("table", "")), schema)
        except (DocumentError, AttributeError, KeyError, TypeError, ValueError):
            raise DocumentError([Problem(where, "", f"stream '{name}': cannot read its schema {ref} at {revision}")]) from None
    return out


def _git_show(config, revision: str, relative: str) -> str:
    where = nowhere(f"--against {revision}")
    try:
        done = subprocess.run(["git", "show", f"{revision}:./{relative}"], cwd=config.dir, capture_output=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DocumentError([Problem(where, "", f"cannot run git: {exc}")]) from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DocumentError([Problem(where, "", f"git cannot show {relative} at {revision}: "
                                     f"{message[-1] if message else 'failed'}")])
    return done.stdout.decode("utf-8", "replace")

