"""A throwaway PostgreSQL cluster: initdb into a directory, run it on 127.0.0.1, remove it.

Used by the test fixtures (tests/fixtures/postgres.py), by the Spark and compose tests, and by
hand for local development:

    python scripts/pg_cluster.py start [--dir DIR] [--port PORT]   # prints the DSN and exports
    python scripts/pg_cluster.py status|stop|destroy [--dir DIR]

(``python -m tickwire.devservices.pg_cluster`` is the same, with ``./.pg-local`` as the default
directory; the script's default is the checkout's ``.pg-local``.)

The cluster is tuned for tests, not durability: fsync and full_page_writes are off (see
TEST_SETTINGS for why synchronous_commit is not). Every connection (TCP and the unix socket) needs the superuser's password.

initdb and the server refuse to run as root. When we are root (CI, this dev box) every server
program runs as an unprivileged OS user instead (which one, and where the programs are:
:mod:`.pg_server_programs`). The cluster directory is chowned to that user; as a normal user
nothing is switched.

Besides the standard library it needs only tickwire.devservices (free ports), so it runs in a
run-time install without extras.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tickwire.devservices.pg_server_programs import ClusterError, find_server_bindir, server_os_user
from tickwire.devservices.ports import free_port
from tickwire.devservices.processes import wait_for_exit

STATE_FILE = "cluster.json"
DEFAULT_SUPERUSER = "tickwire_admin"

# Trade durability for speed: a test cluster is recreated, never recovered from an OS crash.
# fsync=off only skips flushing the OS page cache, so a killed server still recovers every
# acknowledged commit. synchronous_commit stays on: with it off, a commit is acknowledged before
# its WAL leaves PostgreSQL's memory, and the outage tests ("stop -m immediate") would lose
# batches the sink already acknowledged.
TEST_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "64MB",
    "password_encryption": "'scram-sha-256'",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_timezone": "'UTC'",
    "timezone": "'UTC'",
}


@dataclass
class PostgresCluster:
    """One PostgreSQL server with its data directory under `base_dir`.

    `create()` runs initdb (once), `start()`/`stop()` may be repeated and keep the port, the
    data and the password, `destroy()` stops the server and removes `base_dir`.
    """

    base_dir: Path
    port: int
    password: str
    superuser: str = DEFAULT_SUPERUSER
    host: str = "127.0.0.1"
    bindir: Path | None = None
    # A test run that is killed (CI timeout, Ctrl-C twice) must not leave a server behind.
    die_with_parent: bool = False
    _watchdog: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new(cls, base_dir: Path | None = None, port: int | None = None, die_with_parent: bool = False) -> "PostgresCluster":
        if base_dir is None:
            # mkdtemp under /tmp: world-traversable, so the server user can reach it.
            base_dir = Path(tempfile.mkdtemp(prefix="tickwire-pg-"))
        return cls(
            base_dir=Path(base_dir).resolve(),
            port=port or free_port(),
            password=secrets.token_urlsafe(18),
            bindir=find_server_bindir(),
            die_with_parent=die_with_parent,
        )

    @classmethod
    def load(cls, base_dir: Path) -> "PostgresCluster":
        """Reattach to a cluster created earlier (by another process) in `base_dir`."""
        state = json.loads((Path(base_dir) / STATE_FILE).read_text())
        return cls(
            base_dir=Path(base_dir).resolve(),
            port=state["port"],
            password=state["password"],
            superuser=state["superuser"],
            bindir=Path(state["bindir"]),
        )

    # -- paths and connection strings ---------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgresql.log"

    @property
    def dsn(self) -> str:
        """libpq URI of the superuser on the `postgres` database."""
        return self.dsn_for()

    def dsn_for(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        user = user or self.superuser
        password = self.password if password is None and user == self.superuser else password
        credentials = quote(user, safe="")
        if password is not None:
            credentials += ":" + quote(password, safe="")
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def jdbc_url(self, dbname: str = "postgres") -> str:
        """For Spark's JDBC writer; credentials go in separate properties there."""
        return f"jdbc:postgresql://{self.host}:{self.port}/{dbname}"

    # -- lifecycle ----------------------------------------------------------------------------

    def create(self) -> None:
        """initdb with password auth everywhere and the test settings; idempotent."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o700)
        os_user = server_os_user()
        if os_user is not None:
            os.chown(self.base_dir, os_user.pw_uid, os_user.pw_gid)
            self._check_reachable_by(os_user)
        password_file = self.base_dir / "initdb-password"
        password_file.write_text(self.password + "\n")
        if os_user is not None:
            os.chown(password_file, os_user.pw_uid, os_user.pw_gid)
        try:
            self._run_as_server_user(
                "initdb",
                "--pgdata", str(self.data_dir),
                "--username", self.superuser,
                "--pwfile", str(password_file),
                "--auth", "scram-sha-256",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",  # the data is thrown away; skipping fsync saves seconds
            )
        finally:
            password_file.unlink(missing_ok=True)
        settings = dict(TEST_SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.socket_dir}'")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tickwire throwaway test cluster (scripts/pg_cluster.py)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._save_state()

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections; a no-op when running."""
        if self.is_running():
            return
        if self.die_with_parent:
            self._start_watchdog()
        self._run_as_server_user(
            "pg_ctl", "start",
            "--pgdata", str(self.data_dir),
            "--log", str(self.log_file),
            "--wait", "--timeout", str(int(timeout)),
            "--silent",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server. `mode`: "fast" (roll back clients, clean shutdown), "immediate"
        (like a crash: the next start runs recovery) or "smart" (wait for clients)."""
        if not self.is_running():
            return
        self._run_as_server_user(
            "pg_ctl", "stop", "--pgdata", str(self.data_dir), "--mode", mode, "--wait", "--silent"
        )

    def destroy(self) -> None:
        """Stop the server (killing it if pg_ctl cannot) and remove every file."""
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        try:
            self.stop(mode="immediate")
        except ClusterError:
            pid = self._postmaster_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
                wait_for_exit(pid, timeout=10)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def __enter__(self) -> "PostgresCluster":
        self.create()
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- internals ----------------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        """A process that destroys the cluster once our end of its stdin pipe closes, which the
        kernel does when this process dies, however it dies."""
        if self._watchdog is not None and self._watchdog.poll() is None:
            return
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "tickwire.devservices.pg_cluster", "watchdog", "--dir", str(self.base_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to our process group must not kill it first
        )

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
        except (FileNotFoundError, IndexError):
            return None
        return int(first_line)

    def _save_state(self) -> None:
        state = {
            "port": self.port,
            "password": self.password,
            "superuser": self.superuser,
            "bindir": str(self.bindir),
        }
        state_path = self.base_dir / STATE_FILE
        state_path.write_text(json.dumps(state, indent=2) + "\n")
        os.chmod(state_path, 0o600)  # it holds the superuser password

    def _check_reachable_by(self, os_user: pwd.struct_passwd) -> None:
        # A parent directory private to root (e.g. pytest's tmp_path, /root) hides the cluster
        # from the server user; initdb's own error about it is cryptic.
        reachable = subprocess.run(
            ["/usr/bin/test", "-w", str(self.base_dir)], cwd="/", user=os_user.pw_uid,
            group=os_user.pw_gid, extra_groups=[],
        ).returncode == 0
        if not reachable:
            raise ClusterError(
                f"the server runs as OS user {os_user.pw_name!r}, which cannot reach {self.base_dir} "
                "(a parent directory is private); put the cluster under /tmp, e.g. tempfile.mkdtemp()"
            )

    def _run_as_server_user(self, program: str, *args: str) -> None:
        bindir = self.bindir or find_server_bindir()
        os_user = server_os_user()
        drop_privileges = {}
        if os_user is not None:
            drop_privileges = {"user": os_user.pw_uid, "group": os_user.pw_gid, "extra_groups": []}
        env = {
            "PATH": f"{bindir}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.base_dir),
        }
        result = subprocess.run(
            [str(bindir / program), *args],
            # the server user may not be allowed into our working directory (e.g. /root)
            cwd=self.base_dir,
            env=env,
            capture_output=True,
            text=True,
            **drop_privileges,
        )
        if result.returncode != 0:
            log_tail = ""
            if self.log_file.exists():
                log_tail = "\n--- server log (tail) ---\n" + "\n".join(self.log_file.read_text().splitlines()[-20:])
            raise ClusterError(
                f"{program} {' '.join(args[:2])} failed (exit {result.returncode}) for cluster "
                f"{self.base_dir}:\n{result.stdout}{result.stderr}{log_tail}"
            )


def main(argv: list[str] | None = None, default_dir: Path | None = None) -> int:
    """The command line; ``--dir`` defaults to ``default_dir``, else ``./.pg-local``."""
    default_dir = default_dir or Path.cwd() / ".pg-local"
    parser = argparse.ArgumentParser(description="A throwaway local PostgreSQL cluster for development.")
    parser.add_argument("action", choices=["start", "stop", "status", "destroy", "watchdog"])
    parser.add_argument("--dir", type=Path, default=default_dir, help=f"cluster directory (default {default_dir})")
    parser.add_argument("--port", type=int, help="port for a new cluster (default: a free one)")
    options = parser.parse_args(argv)
    exists = (options.dir / STATE_FILE).exists()
    if options.action == "watchdog":  # internal: see PostgresCluster._start_watchdog
        sys.stdin.buffer.read()
        if exists:
            PostgresCluster.load(options.dir).destroy()
        return 0
    try:
        if options.action == "start":
            cluster = PostgresCluster.load(options.dir) if exists else PostgresCluster.new(options.dir, options.port)
            cluster.create()
            cluster.start()
            print(f"PostgreSQL running on {cluster.host}:{cluster.port}, data in {cluster.data_dir}")
            print(f"export TICKWIRE_PG_ADMIN_DSN='{cluster.dsn}'")
            return 0
        if not exists:
            print(f"no cluster in {options.dir}", file=sys.stderr)
            return 1
        cluster = PostgresCluster.load(options.dir)
        if options.action == "status":
            state = "running" if cluster.is_running() else "stopped"
            print(f"{state}: {cluster.host}:{cluster.port}, data in {cluster.data_dir}")
            return 0 if cluster.is_running() else 3
        if options.action == "stop":
            cluster.stop()
        else:
            cluster.destroy()
        return 0
    except ClusterError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
