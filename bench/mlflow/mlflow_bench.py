#!/usr/bin/env python3
"""MLflow side of the mlmesh tracking benchmark.

Measures MLflow's tracking API with a pinned workload in two configurations:

* ``mlflow-server``: ``mlflow server`` (uvicorn, one worker) on a SQLite backend, the
  client talking REST to ``http://127.0.0.1:<port>``;
* ``mlflow-direct``: no server, the client writes ``sqlite:///<tmp>/direct.db`` itself.

Cases (same names as the mlmesh side, ``cargo bench -p mlmesh-nodes --bench tracking``):

* ``log_metric_single``: ``MlflowClient().log_metric(run_id, "loss", 1/(i+1), step=i,
  synchronous=True)`` one after another; calls/s. Each call returns after the row is
  committed to SQLite (by the server, or by the client itself).
* ``log_batch_1000``: ``log_batch`` with 1000 metrics ("loss", steps k*1000 .. k*1000+999)
  per call; metrics/s.
* ``runs_start_end``: ``create_run`` + ``set_terminated(run_id, "FINISHED")``; runs/s.
* ``search_1000_filtered``: 1000 runs in one experiment, run i having metric
  ``rmse = ((i * 7919) % 1000) / 1000``, param ``lr = ["0.001", "0.01", "0.1"][i % 3]`` and
  tag ``team = ["vision", "nlp", "speech", "tabular"][(i // 3) % 4]``; then
  ``search_runs(filter "metrics.rmse < 0.5 and params.lr = '0.01' and tags.team = 'vision'",
  max_results=1000)``; median latency in ms (the match count is checked and reported).
* ``empty_request_rtt`` (server only): ``GET /health`` on a kept-alive HTTP connection;
  median latency in us. The nearest MLflow has to an empty request.

Stdout: one JSON object per measurement per line. Stderr: progress and a table at the end.
MLflow's telemetry is switched off (MLFLOW_DISABLE_TELEMETRY, DO_NOT_TRACK): only
127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# Before mlflow is imported: no telemetry, no async logging, and no background job runner
# in the server (it is not part of tracking and only adds noise on a 2-core machine).
_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    # Otherwise set_terminated() against a server does one more request (get_run) and
    # prints a "View run" link to stdout on every run.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
os.environ.update(_ENV)

# Stdout carries only the JSON lines: keep the real stdout for them, and send anything
# else that writes to sys.stdout (MLflow or its dependencies) to stderr.
JSON_OUT = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
sys.stdout = sys.stderr

LR_VALUES = ["0.001", "0.01", "0.1"]
TEAMS = ["vision", "nlp", "speech", "tabular"]
SEARCH_FILTER = "metrics.rmse < 0.5 and params.lr = '0.01' and tags.team = 'vision'"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def search_row(i: int) -> tuple[float, str, str]:
    """The pinned search workload: (rmse, lr, team) of run i."""
    return ((i * 7919) % 1000) / 1000.0, LR_VALUES[i % 3], TEAMS[(i // 3) % 4]


def expected_matches(n: int) -> int:
    return sum(
        1
        for rmse, lr, team in map(search_row, range(n))
        if rmse < 0.5 and lr == "0.01" and team == "vision"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` in its own process group, killed (the whole group) on stop()."""

    def __init__(self, tmp: str, workers: int, job_execution: bool):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(tmp, "server.log")
        self.cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
            "--artifacts-destination", os.path.join(tmp, "mlartifacts"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", str(workers),
        ]  # fmt: skip
        env = dict(os.environ)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if job_execution else "false"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"mlflow server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        else:
            # The uvicorn child may outlive the `mlflow server` parent: sweep the group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


class Bench:
    def __init__(self, system: str, tracking_uri: str, args: argparse.Namespace, meta: dict):
        from mlflow import MlflowClient

        self.system = system
        self.args = args
        self.meta = meta
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.artifact_root = None
        self.results: list[dict] = []

    def emit(self, case: str, value: float, unit: str, n: int, **extra) -> None:
        rec = {"system": self.system, "case": case, "value": value, "unit": unit, "n": n}
        rec.update(extra)
        rec.update(self.meta)
        self.results.append(rec)
        print(json.dumps(rec), file=JSON_OUT, flush=True)

    def experiment(self, name: str) -> str:
        kwargs = {}
        if self.artifact_root:
            kwargs["artifact_location"] = f"file://{self.artifact_root}/{name}"
        return self.client.create_experiment(name, **kwargs)

    def log_metric_single(self, n: int, warmup: int) -> None:
        c = self.client
        run_id = c.create_run(self.experiment("bench-log-metric")).info.run_id
        for i in range(warmup):
            c.log_metric(run_id, "warmup", 1.0 / (i + 1), step=i, synchronous=True)
        t0 = time.perf_counter()
        for i in range(n):
            c.log_metric(run_id, "loss", 1.0 / (i + 1), step=i, synchronous=True)
        dt = time.perf_counter() - t0
        self.emit("log_metric_single", n / dt, "calls/s", n, seconds=round(dt, 3))

    def log_batch(self, calls: int, size: int, warmup: int) -> None:
        from mlflow.entities import Metric

        c = self.client
        run_id = c.create_run(self.experiment("bench-log-batch")).info.run_id

        def batch(key: str, k: int) -> list:
            ts = 1_700_000_000_000 + k
            return [
                Metric(key, 1.0 / (s + 1), ts, s) for s in range(k * size, (k + 1) * size)
            ]

        for k in range(warmup):
            c.log_batch(run_id, metrics=batch("warmup", k), synchronous=True)
        payloads = [batch("loss", k) for k in range(calls)]  # built outside the timing
        t0 = time.perf_counter()
        for metrics in payloads:
            c.log_batch(run_id, metrics=metrics, synchronous=True)
        dt = time.perf_counter() - t0
        self.emit(
            f"log_batch_{size}", calls * size / dt, "metrics/s", calls * size,
            calls=calls, seconds=round(dt, 3),
        )  # fmt: skip

    def runs_start_end(self, n: int, warmup: int) -> None:
        c = self.client
        exp = self.experiment("bench-runs")
        for _ in range(warmup):
            c.set_terminated(c.create_run(exp).info.run_id, "FINISHED")
        t0 = time.perf_counter()
        for _ in range(n):
            c.set_terminated(c.create_run(exp).info.run_id, "FINISHED")
        dt = time.perf_counter() - t0
        self.emit("runs_start_end", n / dt, "runs/s", n, seconds=round(dt, 3))

    def search(self, runs: int, reps: int) -> None:
        from mlflow.entities import Metric, Param

        c = self.client
        exp = self.experiment("bench-search")
        t0 = time.perf_counter()
        for i in range(runs):
            rmse, lr, team = search_row(i)
            run_id = c.create_run(exp, tags={"team": team}).info.run_id
            c.log_batch(
                run_id,
                metrics=[Metric("rmse", rmse, 1_700_000_000_000, 0)],
                params=[Param("lr", lr)],
                synchronous=True,
            )
        log(f"  {self.system}: seeded {runs} runs in {time.perf_counter() - t0:.1f} s")
        want = expected_matches(runs)
        lat = []
        for rep in range(reps + 1):  # the first one warms caches and is not counted
            t0 = time.perf_counter()
            found = c.search_runs([exp], filter_string=SEARCH_FILTER, max_results=1000)
            dt = time.perf_counter() - t0
            if len(found) != want:
                raise RuntimeError(f"search found {len(found)} runs, expected {want}")
            if rep:
                lat.append(dt * 1e3)
        self.emit(
            f"search_{runs}_filtered", statistics.median(lat), "ms", reps,
            matched=want, min=round(min(lat), 3), max=round(max(lat), 3),
        )  # fmt: skip

    def empty_rtt(self, url: str, n: int, warmup: int) -> None:
        import requests

        s = requests.Session()
        for _ in range(warmup):
            s.get(url + "/health").raise_for_status()
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = s.get(url + "/health")
            lat.append((time.perf_counter() - t0) * 1e6)
            r.raise_for_status()
        lat.sort()
        self.emit(
            "empty_request_rtt", statistics.median(lat), "us", n,
            p99=round(lat[min(n - 1, int(n * 0.99))], 1), request="GET /health",
        )  # fmt: skip
        s.close()

    def run_all(self, server_url: str | None) -> None:
        a = self.args
        steps = [
            ("log_metric_single", lambda: self.log_metric_single(a.log_metric_n, a.warmup)),
            ("log_batch", lambda: self.log_batch(a.batch_calls, a.batch_size, 2)),
            ("runs_start_end", lambda: self.runs_start_end(a.runs_n, a.warmup)),
            ("search", lambda: self.search(a.search_runs, a.search_reps)),
        ]
        if server_url:
            steps.append(("rtt", lambda: self.empty_rtt(server_url, a.rtt_n, a.warmup)))
        for name, fn in steps:
            t0 = time.perf_counter()
            fn()
            log(f"  {self.system}: {name} done in {time.perf_counter() - t0:.1f} s")


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(results: list[dict]) -> str:
    systems = sorted({r["system"] for r in results}, reverse=True)  # server, direct
    cases: list[str] = []
    by = {}
    for r in results:
        if r["case"] not in cases:
            cases.append(r["case"])
        by[(r["system"], r["case"])] = r
    head = ["case", *systems]
    rows = [head]
    for case in cases:
        row = [case]
        for s in systems:
            r = by.get((s, case))
            row.append(f"{fmt(r['value'])} {r['unit']} (n={r['n']})" if r else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    p.add_argument("--configs", default="server,direct", help="server,direct (default both)")
    p.add_argument("--log-metric-n", type=int, help="log_metric calls (default 2000; quick 200)")
    p.add_argument("--batch-calls", type=int, help="log_batch calls (default 50; quick 5)")
    p.add_argument("--batch-size", type=int, default=1000, help="metrics per log_batch (1000)")
    p.add_argument("--runs-n", type=int, help="runs started and ended (default 500; quick 50)")
    p.add_argument("--search-runs", type=int, help="runs in the search experiment (1000; quick 200)")
    p.add_argument("--search-reps", type=int, help="timed searches (default 7; quick 3)")
    p.add_argument("--rtt-n", type=int, help="GET /health round trips (default 2000; quick 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls before each case (20)")
    p.add_argument("--workers", type=int, default=1, help="server workers (default 1)")
    p.add_argument(
        "--job-execution", action="store_true",
        help="leave the server's background job runner on (MLflow's default; off here)",
    )  # fmt: skip
    p.add_argument("--ready-timeout", type=float, default=60.0, help="server start limit, s")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (DBs, server log)")
    a = p.parse_args()

    defaults = dict(log_metric_n=2000, batch_calls=50, runs_n=500, search_runs=1000,
                    search_reps=7, rtt_n=2000)  # fmt: skip
    quick = dict(log_metric_n=200, batch_calls=5, runs_n=50, search_runs=200,
                 search_reps=3, rtt_n=200)  # fmt: skip
    for k, v in (quick if a.quick else defaults).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    if not set(configs) <= {"server", "direct"}:
        p.error("--configs takes server and/or direct")

    import mlflow
    import sqlalchemy

    meta = {"mlflow_version": mlflow.__version__}
    log(
        f"MLflow {mlflow.__version__}, SQLAlchemy {sqlalchemy.__version__}, "
        f"Python {sys.version.split()[0]}; counts: log_metric {a.log_metric_n}, "
        f"log_batch {a.batch_calls} x {a.batch_size}, runs {a.runs_n}, "
        f"search {a.search_runs} runs x {a.search_reps}, rtt {a.rtt_n}, warmup {a.warmup}"
    )

    tmp = tempfile.mkdtemp(prefix="mlflow-bench-")
    old_cwd = os.getcwd()
    os.chdir(tmp)  # anything MLflow writes relative to the cwd (./mlruns) lands here
    results: list[dict] = []
    server = None
    t_all = time.perf_counter()
    try:
        if "server" in configs:
            server = Server(tmp, a.workers, a.job_execution)
            log(f"mlflow-server: {' '.join(server.cmd[1:])}")
            log(f"  ready in {server.wait_ready(a.ready_timeout):.1f} s")
            b = Bench("mlflow-server", server.url, a,
                      dict(meta, workers=a.workers, backend="sqlite"))  # fmt: skip
            b.run_all(server.url)
            results += b.results
            server.stop()
            server = None
        if "direct" in configs:
            log(f"mlflow-direct: sqlite:///{tmp}/direct.db")
            b = Bench("mlflow-direct", f"sqlite:///{tmp}/direct.db", a,
                      dict(meta, backend="sqlite"))  # fmt: skip
            b.artifact_root = os.path.join(tmp, "direct-artifacts")
            b.run_all(None)
            results += b.results
    finally:
        if server is not None:
            server.stop()
        os.chdir(old_cwd)
        if a.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    log(f"\nMLflow {mlflow.__version__}, {time.perf_counter() - t_all:.0f} s in all"
        + (" (--quick)" if a.quick else ""))  # fmt: skip
    log(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
