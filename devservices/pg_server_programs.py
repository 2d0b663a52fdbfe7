"""Where the PostgreSQL server programs of a throwaway cluster (:mod:`.pg_cluster`) are, and which
OS user runs them.

initdb and the server refuse to run as root. When we are root (CI, this dev box) every server
program runs as an unprivileged OS user instead: ``$TICKWIRE_PG_OS_USER``, else `postgres` when
the Debian package created it, otherwise a system user `tickwire-pg` created on first use. As a
normal user nothing is switched.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

FALLBACK_OS_USER = "tickwire-pg"


class ClusterError(RuntimeError):
    """initdb, pg_ctl or the OS user set-up failed; the message says which and why."""


def find_server_bindir() -> Path:
    """The directory holding initdb and pg_ctl: $TICKWIRE_PG_BINDIR, else the newest
    /usr/lib/postgresql/<version>/bin (Debian), else wherever initdb is on PATH."""
    override = os.environ.get("TICKWIRE_PG_BINDIR")
    candidates = [Path(override)] if override else []
    debian_dirs = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(d) for d in debian_dirs), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise ClusterError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found in /usr/lib/postgresql/*/bin or on "
        "PATH; run `sudo scripts/install_system_deps.sh` or set TICKWIRE_PG_BINDIR"
    )


def _version_key(bindir: Path) -> tuple[int, ...]:
    version = bindir.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def server_os_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get("TICKWIRE_PG_OS_USER")
    for name in ([wanted] if wanted else ["postgres", FALLBACK_OS_USER]):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    if wanted:
        raise ClusterError(f"TICKWIRE_PG_OS_USER={wanted!r} names no OS user")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(FALLBACK_OS_USER)
