"""A private PostgreSQL that a fault may stop and start again (the rig's server
removes its files when stopped)."""

from __future__ import annotations

from tests.rig.postgres import PostgresServer


class StoppablePostgres(PostgresServer):
    def halt(self) -> None:
        """A fast shutdown: every connection is cut, the data stays."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.pid = None

    def resume(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off",
            "start",
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
