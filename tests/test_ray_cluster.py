"""Joining a Ray cluster as users start one (``ray start --head``) with Ray 2.60's token authentication.

* a real head with token auth: a driver without the token, or with a wrong one, gets one line saying what to
  set, within seconds (not Ray's 20 retries and a "not a Ray head" verdict); with the token it joins;
* ``ray://`` (Ray Client, which Ray Data cannot run on) is refused in one line;
* ``--ray auto`` at a closed port says nothing listens there (not "something accepts connections");
* ``BESTSHOT_RAY_CONNECT_TIMEOUT_S`` bounds ``serve --ray`` and ``eval metrics --ray`` too.

The head is started with random ports, one CPU and its own ``--temp-dir``; it is stopped by ending the
processes that name that folder (never ``ray stop``, which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bestshot.errors import BestshotError

# its own group: these tests start their own head (`ray start`) or none, never the session's local Ray (ray_local),
# so under xdist they run beside the "ray" group's worker instead of after it (they are the head's slow start-up)
pytestmark = pytest.mark.xdist_group("ray_head")

SRC = str(Path(__file__).resolve().parents[1] / "src")
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no Ray auth settings of the caller, a HOME of its own (no ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), HOME=str(home), **extra)
    return env


def _ours(temp_dir: str) -> list[int]:
    """Process ids of the live processes whose command line names ``temp_dir`` (the head's Ray processes)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if temp_dir in cmdline and _alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def _stop(temp_dir: str) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):  # gcs_server and raylet may ignore TERM
        pids = _ours(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.2)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """``ray start --head`` with token authentication (RAY_AUTH_MODE=token and a token in RAY_AUTH_TOKEN, as the
    README's recipe does), on 127.0.0.1 with random ports and 1 CPU. Yields ``(address, token, home)``."""
    if not shutil.which("ray"):
        pytest.skip("the ray CLI is not installed")
    home = tmp_path_factory.mktemp("home")
    temp_dir = tempfile.mkdtemp(prefix="bsray", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    token = secrets.token_hex(16)
    port = _free_port()
    lo = _free_port() // 100 * 100  # a hundred worker ports; a clash only costs a retry on Ray's side
    ports = {
        "--dashboard-port": _free_port(),
        "--ray-client-server-port": _free_port(),
        "--node-manager-port": _free_port(),
        "--object-manager-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--metrics-export-port": _free_port(),
    }
    cmd = [
        "ray",
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        "1",
        "--num-gpus",
        "0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--temp-dir",
        temp_dir,
        "--min-worker-port",
        str(lo),
        "--max-worker-port",
        str(lo + 99),
    ]
    for flag, value in ports.items():
        cmd += [flag, str(value)]
    t = time.monotonic()
    started = subprocess.run(
        cmd, env=_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token), capture_output=True, text=True, timeout=180
    )
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        print(f"\nray start --head (token auth) took {time.monotonic() - t:.1f} s")
        yield f"127.0.0.1:{port}", token, home
    finally:
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


JOIN = (
    "import sys, time; t = time.monotonic()\n"
    "from bestshot.scale.cluster import connect\nfrom bestshot.errors import BestshotError\n"
    "try:\n    ray = connect(sys.argv[1], timeout_s=60)\n"
    "    print('joined', int(ray.cluster_resources()['CPU']), f'{time.monotonic() - t:.1f}')\n"
    "except BestshotError as e:\n    print('error:', e, f'{time.monotonic() - t:.1f}')\n"
)


def _join(address: str, env: dict[str, str]) -> tuple[str, str]:
    p = subprocess.run([sys.executable, "-c", JOIN, address], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.strip(), p.stderr


@pytest.mark.slow  # `ray start --head` alone takes 30-40 s on the shared 2-core machine
def test_token_auth_head_tells_the_driver_what_to_set(token_head):
    address, token, home = token_head
    out, err = _join(address, _env(home))  # no RAY_AUTH_MODE: Ray sends no token to an explicit address
    assert out.startswith("error:") and "uses token authentication" in out and "RAY_AUTH_MODE=token" in out, out
    assert "ray get-auth-token" in out and "RAY_AUTH_TOKEN" in out
    assert float(out.rsplit(" ", 1)[1]) < 30 and err.count("InvalidAuthToken") <= 2, err  # Ray's own: 20 lines, 20 s
    print(f"\nno token: {out.rsplit(' ', 1)[1]} s")

    (home / ".ray").mkdir(exist_ok=True)
    (home / ".ray" / "auth_token").write_text(token)  # the token at hand, but no token mode: say so
    out, _ = _join(address, _env(home))
    assert "RAY_AUTH_MODE=token" in out and "auth_token" in out and "token mode" in out, out
    (home / ".ray" / "auth_token").unlink()

    out, _ = _join(address, _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token"))
    assert out.startswith("error:") and "refused this process's auth token (from RAY_AUTH_TOKEN)" in out, out

    out, _ = _join(address, _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))  # the README's recipe
    assert out.startswith("joined 1 "), out
    print(f"with the token: joined in {out.rsplit(' ', 1)[1]} s")


def test_auth_advice_names_the_fix(monkeypatch, tmp_path):
    from bestshot.scale.cluster import auth_advice, token_source

    for var in AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert token_source() is None
    line = auth_advice("10.0.0.5:6379")
    assert "10.0.0.5:6379" in line and "RAY_AUTH_MODE=token" in line and "\n" not in line
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/etc/ray-token")
    assert "refused this process's auth token (from RAY_AUTH_TOKEN_PATH=/etc/ray-token)" in auth_advice("h:1")


def test_ray_client_address_is_refused(monkeypatch):
    from bestshot.scale.cluster import connect, parse_address

    with pytest.raises(BestshotError, match="Ray Client addresses .ray://. are not supported.*HEAD:6379"):
        parse_address("ray://head:10001")
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    with pytest.raises(BestshotError, match="ray job submit"):
        connect("ray://head:10001")


def test_auto_at_a_closed_port_says_nothing_listens(monkeypatch):
    from bestshot.scale.cluster import connect

    port = _free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    t = time.monotonic()
    with pytest.raises(BestshotError) as e:
        connect("auto", timeout_s=5)
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port} (found by RAY_ADDRESS" in str(e.value)
    assert "accepts connections" not in str(e.value) and time.monotonic() - t < 5


def test_connect_timeout_env(monkeypatch):
    from bestshot.scale.cluster import DEFAULT_TIMEOUT_S, connect_timeout

    monkeypatch.delenv("BESTSHOT_RAY_CONNECT_TIMEOUT_S", raising=False)
    assert connect_timeout() == DEFAULT_TIMEOUT_S
    monkeypatch.setenv("BESTSHOT_RAY_CONNECT_TIMEOUT_S", "3.5")
    assert connect_timeout() == 3.5
    monkeypatch.setenv("BESTSHOT_RAY_CONNECT_TIMEOUT_S", "soon")
    with pytest.raises(BestshotError, match="not a number of seconds"):
        connect_timeout()


@pytest.mark.parametrize("command", ["serve", "metrics"])
def test_serve_and_metrics_honour_the_connect_timeout(command, tmp_path):
    """A port that accepts connections and never answers: both commands give up after the env's 3 s (they
    waited a fixed 10 s before)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    args = (
        ["serve", "--ray", f"127.0.0.1:{port}", "--out-dir", str(tmp_path / "out"), "--port", str(_free_port())]
        if command == "serve"
        else ["eval", "metrics", "--real", str(tmp_path), "--fake", str(tmp_path), "--ray", f"127.0.0.1:{port}"]
    )
    try:
        p = subprocess.run(
            [sys.executable, "-m", "bestshot.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(tmp_path, BESTSHOT_RAY_CONNECT_TIMEOUT_S="3"),
        )
    finally:
        srv.close()
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert f"no Ray cluster answered at 127.0.0.1:{port} within 3 s" in p.stdout + p.stderr, p.stderr[-3000:]
