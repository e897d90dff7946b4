from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "hw_profiles" / "sim.toml"


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    prog: str = "capsight_edge.cli.main",
) -> subprocess.CompletedProcess[str]:
    """Run a console command in a real child process, as a technician would. Past ``timeout``
    it gets a Ctrl-C (a command stops what it started on one) and the test fails with the tail
    of what it printed, so that a slow machine's failure says how far it got."""
    with subprocess.Popen(
        [sys.executable, "-m", prog, *args],
        cwd=cwd or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            out, err = _stop(proc)
            pytest.fail(
                f"{' '.join([prog, *args])}: still running after {timeout:g} s; "
                f"stdout ends:\n{out[-3000:]}\nstderr ends:\n{err[-3000:]}"
            )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


#: How a test stops a command or a run it started that is still going: a Ctrl-C first (a
#: command stops what it started on one) and a minute for it, then SIGKILL and 10 s more.
STOP_SIGNALS = ((signal.SIGINT, 60.0), (signal.SIGKILL, 10.0))


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """What a command past its time printed, stopped by STOP_SIGNALS. A child of its still
    holding the pipes at the end is not waited for: what came before it is returned."""
    for sig, grace_s in STOP_SIGNALS:
        proc.send_signal(sig)
        try:
            return proc.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired as exc:  # bytes so far, as Popen keeps them
            said = [
                x.decode(errors="replace") if isinstance(x, bytes) else ""
                for x in (exc.stdout, exc.stderr)
            ]
    return said[0], said[1]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A console command's environment: this one's without ``CAPSIGHT_PROFILE``, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k != "CAPSIGHT_PROFILE"}, **(extra or {})}


@pytest.fixture
def sim_profile() -> Path:
    return SIM


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it is true; False at the deadline (the caller asserts)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


_SCHEMAS: dict[str, object] = {}


def json_records(stdout: str, *, folder: str = "schemas/cli") -> list[dict]:  # type: ignore[type-arg]
    """Parse JSON Lines and hold every record against its schema in ``schemas/`` (by ``type``)."""
    import json

    import jsonschema

    out = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        assert isinstance(record, dict) and "type" in record, line
        key = f"{folder}/{record['type']}"
        if key not in _SCHEMAS:
            path = ROOT / folder / f"{record['type']}.json"
            assert path.is_file(), f"no schema for record type {record['type']!r} in {folder}"
            _SCHEMAS[key] = json.loads(path.read_text())
        jsonschema.validate(record, _SCHEMAS[key])  # type: ignore[arg-type]
        out.append(record)
    return out


def doctor_checks(stdout: str) -> list[dict]:  # type: ignore[type-arg]
    """`doctor --json`: the `check` records (schema-checked), after asserting the last record is
    the `doctor` summary and agrees with them."""
    records = json_records(stdout)
    *checks, summary = records
    assert summary["type"] == "doctor" and {c["type"] for c in checks} <= {"check"}
    assert summary["checks"] == len(checks)
    assert summary["failed"] == [c["name"] for c in checks if c["status"] == "fail"]
    return checks


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Three simulated carts in three stores, recorded once per test run and ingested by a sink
    (tests/labelling_helpers.py); tests copy its sink folder before they change anything."""
    from tests.labelling_helpers import ingest_fleet, record_fleet

    root = tmp_path_factory.mktemp("fleet")
    return ingest_fleet(root, record_fleet(root))


def start_run(
    data: Path,
    *args: str,
    profile: Path | None = None,
    stderr: int = subprocess.PIPE,
    new_session: bool = False,
) -> subprocess.Popen[str]:
    """`capsight run --json` on ``data`` as a real process (errors only on stderr); its first
    stdout line is the `run_started` record, written once everything runs. ``new_session``: in
    a process group of its own (to kill it whole)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capsight_edge.cli.main",
            "--log-level",
            "ERROR",
            "run",
            "--json",
            "--data",
            str(data),
            "--profile",
            str(profile or SIM),
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=new_session,
    )


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a real HTTP S3 endpoint), for one test module."""
    from capsight_edge.localsink import free_port, wait_http

    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, 30, alive=lambda: proc.poll() is None)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A real PostgreSQL server on 127.0.0.1 for the whole run (``initdb`` in a temporary
    folder; as root it runs as ``nobody``); ``postgres.database()`` makes a fresh database."""
    from cloud_sink.localpg import LocalPostgres, pg_bin

    if pg_bin() is None:
        pytest.skip("no PostgreSQL server programs (initdb): ./dev.sh test installs them")
    pg = LocalPostgres().start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def sink_db_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a SinkDB lives, once per backend: a SQLite file (the embedded default), then a
    fresh database on the test run's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "sink.db")
    return request.getfixturevalue("postgres").database()  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sink_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a whole module twice: its sinks on SQLite files, then on PostgreSQL (a fresh
    database per data folder; see tests/sink_helpers.py)."""
    from tests.sink_helpers import BACKEND

    BACKEND.use(request.getfixturevalue("postgres") if request.param == "postgresql" else None)
    try:
        yield request.param
    finally:
        BACKEND.use(None)


# The quick benchmark run (`python -m benchmarks --quick`, about 4 minutes of its own) starts
# when the session's tests do, niced, and runs beside the tests that leave a core idle: the
# suite's tests keep one of the two cores busy on average. The modules marked ``whole_machine``
# run after it: they take both cores, start a Ray cluster (whose `ray stop --force` ends every
# Ray process here, the quick run's too) or count this machine's processes and shared memory.
QUICK_RUN = pytest.StashKey["QuickRunProcess"]()
QUICK_RUN_NICE = 10


class QuickRunProcess:
    """The quick benchmark run as a child process in a session of its own, with its report
    folder (``out``) and its temporary folder (``scratch``, its ``TMPDIR``) under ``root``."""

    def __init__(self) -> None:
        import tempfile

        from capsight_edge.localray import niced

        self.root = Path(tempfile.mkdtemp(prefix="capsight-quick-run-"))
        self.scratch, self.out = self.root / "tmp", self.root / "out"
        self.scratch.mkdir()
        self.stderr_path = self.root / "stderr.txt"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks", "--quick", "--out", str(self.out)],
                cwd=ROOT,
                env=cli_env({"TMPDIR": str(self.scratch)}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=niced(QUICK_RUN_NICE),
            )

    def wait(self, timeout_s: float) -> tuple[int, str]:
        """The run's exit status and its stderr (a TimeoutExpired past ``timeout_s``)."""
        code = self.proc.wait(timeout=timeout_s)
        return code, self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        """Interrupts a run still going (Ctrl-C first, so that it removes what it made), then
        removes its folder."""
        import shutil

        if self.proc.poll() is None:
            for sig, grace_s in STOP_SIGNALS:
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=grace_s)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``one_database`` checks what does not depend on the database (parsing,
    bounds and timeouts before it is reached; what labelling decides from the frames): its
    PostgreSQL pass would repeat its SQLite pass. Each module keeps other tests that take the
    same paths through PostgreSQL.

    Then, after every other deselection: when a selected test uses the quick benchmark run, its
    module goes after the others, the ``whole_machine`` modules last, and the run starts."""
    keep, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.get_closest_marker("one_database") and params.get("sink_backend") == "postgresql":
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    quick = {getattr(i, "module", None) for i in items if "quick_run" in i.fixturenames}
    if not quick:
        return

    def phase(item: pytest.Item) -> int:
        if item.get_closest_marker("whole_machine"):
            return 2
        return 1 if getattr(item, "module", None) in quick else 0

    items.sort(key=phase)  # stable: each module's tests keep their order
    if not config.option.collectonly:
        config.stash[QUICK_RUN] = QuickRunProcess()


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(QUICK_RUN, None)
    if run is not None:
        run.close()
