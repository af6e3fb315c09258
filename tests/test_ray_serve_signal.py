"""`bestshot serve --ray` as a real process: SIGTERM (what Ctrl-C, systemd and Kubernetes send) stops it and
removes its Serve application, also when signals come in a burst. (The handler only sets a flag: it used to
call Event.set(), which deadlocked when a signal arrived while the main thread held the Event's lock — seen by
hand with py-spy, a race this test cannot force.) It joins the session's local Ray, after
tests/test_ray_serve.py's deployment is gone (its fixture is module-scoped)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker owns the session's local Ray (conftest.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a `bestshot serve --ray` process and its Serve application (~20 s); the stop path (what the
# handler's flag triggers) runs fast at the end of test_ray_serve.py's module fixture
def test_sigterm_stops_serve_on_ray(ray_local, tmp_path):
    from ray import serve

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "bestshot.cli",
        "serve",
        "--ray",
        ray_local.address,
        "--replicas",
        "1",
        "--replica-cpus",
        "0.5",
        "--port",
        str(port),
        "--out-dir",
        str(tmp_path / "out"),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://localhost:{port}/sdapi/v1/samplers", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError("serve --ray did not answer within 240 s")
        for _ in range(3):  # a second signal during the stop must not hang or kill it half-way
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopping" in out and "Traceback" not in out
        assert "bestshot" not in serve.status().applications  # its app is gone from the shared cluster
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
