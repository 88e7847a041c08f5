"""Real `semlayout serve` processes under load, and storage faults made for real.

- `ServeProcess`: `semlayout serve` in its own process group. With `tmpfs_dir`, it runs in a
  private mount namespace (`unshare -m`) where `tmpfs_dir` is a small tmpfs of its own: the
  test can then fill that file system (`fill_disk`: ENOSPC, a real disk-full) or put a
  read-only bind mount over it (`read_only`: every file opened from then on is read-only,
  as with a volume remounted read-only) and clear either, without touching the machine's
  mounts (they vanish with the process). `in_namespace` runs a command that sees them.
- `LoadClients`: client threads posting translate and (every `feedback_every`-th request)
  feedback with a fresh, alignable pair, round-robin over the replicas, recording every
  outcome with the time it started and ended.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers_serving import alignable_pair, free_port, png_bytes

API = "replica-api-token"


def semlayout_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "semlayout.cli", *args]


def namespaces_available() -> bool:
    try:
        r = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def require_namespaces() -> None:
    if not namespaces_available():
        pytest.skip("storage faults need `unshare -m` (a private mount namespace, as root)")


class ServeProcess:
    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        env: dict[str, str] | None = None,
        tmpfs_dir: Path | None = None,
        tmpfs_size: str = "24m",
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpfs_dir = tmpfs_dir
        serve = semlayout_cmd("serve", *args)
        serve += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        cmd = serve
        if tmpfs_dir is not None:
            tmpfs_dir.mkdir(parents=True, exist_ok=True)
            mount = f'mount -t tmpfs -o size={tmpfs_size} tmpfs "$0" && exec "$@"'
            # unshare and sh exec: the server keeps this process's pid (nsenter -t pid)
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", mount]
            cmd += [str(tmpfs_dir), *serve]
        self.log = log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SEMLAYOUT_API_TOKEN": API, **(env or {})},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.tail()}")
            with (
                contextlib.suppress(Exception),
                urllib.request.urlopen(self.url + "/readyz", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve not ready in {timeout:.0f} s: {self.tail()}")
            time.sleep(0.3)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def in_namespace(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `cmd` in the server's mount namespace (it sees the tmpfs and the faults)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "--", *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def fill_disk(self) -> None:
        assert self.tmpfs_dir is not None
        filler = self.tmpfs_dir / "filler"
        self.in_namespace("sh", "-c", f"cat /dev/zero > {filler}", check=False)  # stops at ENOSPC
        free = self.in_namespace("df", "--output=avail", "-B1", str(self.tmpfs_dir)).stdout
        assert int(free.split()[-1]) == 0, free

    def free_disk(self) -> None:
        assert self.tmpfs_dir is not None
        self.in_namespace("rm", "-f", str(self.tmpfs_dir / "filler"))

    def read_only(self) -> None:
        assert self.tmpfs_dir is not None
        d = str(self.tmpfs_dir)
        self.in_namespace("mount", "--bind", d, d)
        self._mount_retrying("remount,ro,bind", d)

    def writable(self) -> None:
        assert self.tmpfs_dir is not None
        self._mount_retrying("remount,rw,bind", str(self.tmpfs_dir))

    def _mount_retrying(self, options: str, path: str, seconds: float = 30.0) -> None:
        # A read-only remount of a bind mount fails with EBUSY ("mount point is busy") while any
        # file opened through it is open for writing: under load the server's feedback files and
        # SQLite journals come and go many times a second. Retry in a tight loop inside the
        # namespace (no nsenter per attempt) until an instant with no writer; the fault itself is
        # what the test is about, not the instant it starts.
        tries = max(1, int(seconds / 0.02))
        script = (
            f'i=0; while [ "$i" -lt {tries} ]; do '
            f'err=$(mount -o {options} "$1" 2>&1) && exit 0; '
            'i=$((i+1)); sleep 0.02; done; echo "$err" >&2; exit 32'
        )
        res = self.in_namespace("sh", "-c", script, "sh", path, check=False)
        assert res.returncode == 0, f"mount -o {options} {path}: {res.returncode} {res.stderr}"

    def kill9(self) -> None:
        os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(20)


@dataclass
class Outcome:
    kind: str  # "translate" | "feedback"
    url: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection refused or reset)
    ident: str | None = None  # X-Prediction-Id, or the feedback row id
    problem: str | None = None  # a 200 without its id, a 503 that is not JSON, a 5xx, ...


@dataclass
class LoadClients:
    urls: list[str]
    images: list[np.ndarray]
    n_clients: int = 4
    feedback_every: int = 0  # 0: translate only
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> LoadClients:
        for i in range(self.n_clients):
            th = threading.Thread(target=self._client, args=(i,), daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for th in self._threads:
            th.join(120)
        return self.outcomes

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=60) as client:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                url = self.urls[(i + n) % len(self.urls)]
                if self.feedback_every and n % self.feedback_every == self.feedback_every - 1:
                    outcome = self._feedback(client, url, seed=1_000_000 * (i + 1) + n)
                else:
                    outcome = self._translate(client, url, self.images[(i + n) % len(self.images)])
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status is None:
                    time.sleep(0.05)  # a dead replica refuses at once: do not spin

    def _translate(self, client: httpx.Client, url: str, img: np.ndarray) -> Outcome:
        t0 = time.monotonic()
        try:
            r = client.post(
                f"{url}/v1/translate/sem2layout",
                files={"image": ("x.png", png_bytes(img), "image/png")},
            )
        except httpx.HTTPError:
            return Outcome("translate", url, t0, time.monotonic(), None)
        out = Outcome("translate", url, t0, time.monotonic(), r.status_code)
        if r.status_code == 200:
            out.ident = r.headers.get("x-prediction-id")
            if not out.ident or r.headers.get("content-type") != "image/png":
                out.problem = "a 200 without its prediction id or PNG"
        else:
            out.problem = _refusal_problem(r)
        return out

    def _feedback(self, client: httpx.Client, url: str, seed: int) -> Outcome:
        sem, lay = alignable_pair(seed)
        t0 = time.monotonic()
        try:
            r = client.post(
                f"{url}/v1/feedback",
                headers={"Authorization": f"Bearer {API}"},
                data={"pattern_type": "load"},
                files={
                    "sem": ("s.png", png_bytes(sem), "image/png"),
                    "layout": ("l.png", png_bytes(lay), "image/png"),
                },
            )
        except httpx.HTTPError:
            return Outcome("feedback", url, t0, time.monotonic(), None)
        out = Outcome("feedback", url, t0, time.monotonic(), r.status_code)
        if r.status_code == 200:
            out.ident = r.json().get("id")
        else:
            out.problem = _refusal_problem(r)
        return out


def _refusal_problem(r: httpx.Response) -> str | None:
    """None for what a storage fault may answer: a JSON 503 with a reason and Retry-After."""
    if r.status_code != 503:
        return f"HTTP {r.status_code}: {r.text[:200]}"
    try:
        detail = r.json()["detail"]
    except Exception:  # noqa: BLE001
        return f"a 503 that is not JSON: {r.text[:200]}"
    if not isinstance(detail, str) or not detail:
        return "a 503 without a reason"
    if not r.headers.get("retry-after"):
        return "a 503 without Retry-After"
    return None


def answered(outcomes: list[Outcome], kind: str, status: int = 200) -> list[Outcome]:
    return [o for o in outcomes if o.kind == kind and o.status == status]


def readyz(url: str) -> tuple[int, dict]:
    r = httpx.get(f"{url}/readyz", timeout=30)
    return r.status_code, r.json()
