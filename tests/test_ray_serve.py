"""`bestshot serve --ray`: the app on Ray Serve with 2 CPU replicas (tiny SD 1.5) on the session's local Ray,
driven by the real `webuiapi` client through Serve's HTTP proxy; the shared queue bound; the pieces without Ray."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from bestshot.errors import BestshotError
from bestshot.scale.serve import ReplicaPlan, SlotCounter, lease_seconds, plan_replicas, shortfall
from bestshot.server.queue import JobQueue, QueueFull

pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker owns the session's local Ray (conftest.py)

AUTH = "Basic " + base64.b64encode(b"user:pw").decode()
BODY = {"prompt": "a red circle", "steps": 1, "width": 32, "height": 32, "sampler_name": "Euler"}


# ------------------------------------------------------------------------------ without Ray
def test_slot_counter_bounds_releases_and_expires():
    c = SlotCounter(2, lease_s=None)
    a, held = c.acquire("r1")
    b, _ = c.acquire("r2")
    assert held == 1 and c.acquire("r1") == (None, 2)
    assert c.release(a) and not c.release(a)  # once only
    assert c.acquire("r2")[0] is not None and c.stats()["holders"] == {"r2": 2} and c.stats()["peak"] == 2
    short = SlotCounter(1, lease_s=0.05)  # a holder that never gives its slot back (a dead replica)
    assert short.acquire("dead")[0] is not None and short.acquire("x")[0] is None
    time.sleep(0.1)
    assert short.acquire("x")[0] is not None and short.stats()["expired"] == 1
    assert lease_seconds(8, 900.0) == 8 * 900 + 60 and lease_seconds(8, None) is None


def test_slots_follow_their_holders_life():
    """A holder that stops beating (a replica that died) loses its slots after the grace; one that beats keeps
    them, however long its jobs run."""
    now = [0.0]
    c = SlotCounter(3, lease_s=None, grace_s=30.0, clock=lambda: now[0])
    for holder in ("alive", "dead", "dead"):
        assert c.acquire(holder)[0] is not None
    assert c.acquire("other")[0] is None  # 3 of 3 out
    for t in range(5, 60, 5):  # an hour-long job would beat all along; "dead" never beats again
        now[0] = float(t)
        assert c.beat("alive") == 1
    stats = c.stats()
    assert stats["held"] == 1 and stats["holders"] == {"alive": 1} and stats["orphaned"] == 2
    assert c.acquire("other")[0] is not None and c.acquire("other")[0] is not None  # capacity 3 again


class _Gate:
    """A shared bound of ``capacity`` jobs for several JobQueues, in-process (what the Ray actor does)."""

    def __init__(self, capacity):
        self.counter = SlotCounter(capacity)
        self.released = []

    def acquire(self):
        return self.counter.acquire("test")

    def release(self, token):
        self.released.append(token)
        self.counter.release(token)


def test_job_queues_sharing_a_gate_hold_one_bound():
    gate = _Gate(2)
    q1, q2 = JobQueue(8), JobQueue(8)
    q1.gate = q2.gate = gate
    go = threading.Event()
    j1 = q1.submit("t", lambda job: go.wait(10))
    j2 = q2.submit("t", lambda job: go.wait(10))
    with pytest.raises(QueueFull) as full:  # 2 in all, although each queue alone would take 8
        q1.submit("t", lambda job: None)
    assert full.value.retry_after >= 1
    go.set()
    j1.future.result(5), j2.future.result(5)
    for _ in range(50):
        if gate.counter.stats()["held"] == 0:
            break
        time.sleep(0.05)
    assert gate.counter.stats()["held"] == 0 and len(gate.released) == 2  # slots go back when jobs end
    block = threading.Event()
    running = q1.submit("t", lambda job: block.wait(10))
    queued = q1.submit("t", lambda job: None)
    assert q1.cancel(queued.id) is queued and gate.counter.stats()["held"] == 1  # a cancelled job's slot is back
    block.set()
    running.future.result(5)
    q1.close(5), q2.close(5)


def test_replica_plans():
    assert plan_replicas(4) == ReplicaPlan(min_replicas=4, max_replicas=4, num_gpus=1.0, num_cpus=1.0)  # one per GPU
    assert plan_replicas(0).num_gpus == 0 and plan_replicas(0).max_replicas == 1  # CPU cluster: one CPU replica
    assert plan_replicas(2, num_gpus=0.5).max_replicas == 4  # two per GPU
    auto = plan_replicas(4, min_replicas=1, max_replicas=3)
    assert auto.autoscaling and auto.deployment_options()["autoscaling_config"]["max_replicas"] == 3
    opts = plan_replicas(0, replicas=2, num_cpus=0.5, max_queue=3).deployment_options()
    assert opts["num_replicas"] == 2 and opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert opts["max_ongoing_requests"] > 3 and opts["backpressure_config"].status_code == 429
    with pytest.raises(BestshotError, match="not both"):
        plan_replicas(2, replicas=2, max_replicas=3)
    with pytest.raises(BestshotError, match="min-replicas"):
        plan_replicas(2, min_replicas=3, max_replicas=2)
    assert "fewer than" in shortfall(plan_replicas(1, replicas=2, num_gpus=1), 1)


def test_serve_ray_flags_need_ray(capsys, monkeypatch):
    from helpers import run_cli

    code, _, err = run_cli(["serve", "--replicas", "2"], capsys, monkeypatch)
    assert code != 0 and "need --ray" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ on Ray Serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, auth: str | None = AUTH) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def on_ray(ray_local, tiny_sd15, tiny_clip, tmp_path_factory):
    """`serve --ray --replicas 2 --replica-cpus 0.5 --max-queue 2 --api-auth user:pw` (the code behind the flags,
    on a thread) on the session's 2-CPU Ray; stopped at the end like Ctrl-C does, so other Ray tests get the
    CPUs back."""
    from bestshot.scale.serve import SLOTS_ACTOR
    from bestshot.server.app import ServerSettings
    from bestshot.server.ray_serve import serve_on_ray

    out = tmp_path_factory.mktemp("ray_serve") / "images_out"
    settings = ServerSettings(model=tiny_sd15, scorer=tiny_clip, out_dir=str(out), max_queue=2, api_auth="user:pw")
    port, stop, said = _free_port(), threading.Event(), []
    patch = pytest.MonkeyPatch()
    patch.setattr("bestshot.scale.serve.GRACE_S", 3.0)  # a killed replica's slots come back within 3 s, not 30
    thread = threading.Thread(
        target=serve_on_ray,
        args=(settings,),
        daemon=True,
        kwargs=dict(address=None, host="127.0.0.1", port=port, replicas=2, num_cpus=0.5, echo=said.append, stop=stop),
    )
    thread.start()
    url = f"http://localhost:{port}"
    for _ in range(600):
        if said and "http://" in said[-1]:
            break
        assert thread.is_alive(), said
        time.sleep(0.2)
    assert "2 replica(s), 0.5 CPU each, at most 2 jobs" in said[-1]
    counter = ray_local.ray.get_actor(SLOTS_ACTOR[0], namespace=SLOTS_ACTOR[1])
    try:
        yield type("OnRay", (), {"url": url, "port": port, "out": out, "counter": counter, "ray": ray_local.ray})
    finally:
        stop.set()  # what Ctrl-C / SIGTERM do
        thread.join(120)
        patch.undo()
    assert not thread.is_alive() and "stopping" in said[-1]
    from ray import serve

    assert "bestshot" not in serve.status().applications  # the replicas are gone: their CPUs are free again
    assert ray_local.ray.is_initialized()  # the session's Ray (not started by serve --ray) keeps running


def test_webuiapi_txt2img_through_two_replicas(on_ray):
    webuiapi = pytest.importorskip("webuiapi")
    from ray import serve

    app = serve.status().applications["bestshot"]
    replicas = app.deployments["BestshotReplica"].replica_states
    assert replicas.get("RUNNING") == 2, replicas

    with pytest.raises(RuntimeError, match="401"):  # auth is enforced behind the proxy
        webuiapi.WebUIApi(host="localhost", port=on_ray.port, sampler="Euler").txt2img(
            prompt="a red circle", steps=1, width=32, height=32
        )
    api = webuiapi.WebUIApi(host="localhost", port=on_ray.port, sampler="Euler", username="user", password="pw")
    for seed in (11, 12, 13):
        res = api.txt2img(prompt="a red circle", seed=seed, steps=1, width=32, height=32, save_images=True)
        assert len(res.images) == 1 and res.info["all_seeds"] == [seed] and res.images[0].size == (32, 32)
        name = res.info["bestshot"]["images"][0]["file"]
        assert (on_ray.out / name).is_file()  # the shared output store
    # whichever replica answers lists every run, and serves every image (the gallery's routes)
    req = urllib.request.Request(f"{on_ray.url}/v1/runs?limit=50", headers={"Authorization": AUTH})
    for _ in range(4):
        with urllib.request.urlopen(req, timeout=60) as r:
            runs = json.loads(r.read())["runs"]
        assert len(runs) >= 3 and all(x["img_file"] for x in runs)
    for path, code in (("/v1/runs", 401), ("/internal/ping", 401), ("/", 200)):  # the gallery page is public
        try:
            with urllib.request.urlopen(f"{on_ray.url}{path}", timeout=60) as r:
                got = r.status
        except urllib.error.HTTPError as e:
            got = e.code
        assert got == code, path


def test_burst_gets_429s_from_the_shared_bound_and_no_server_error(on_ray):
    before = on_ray.ray.get(on_ray.counter.stats.remote())
    n = 10
    gate = threading.Barrier(n)

    def one(i):
        gate.wait()
        return _post(f"{on_ray.url}/sdapi/v1/txt2img", {**BODY, "seed": 100 + i, "steps": 4})

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    tally = {}
    for status, headers, data in results:
        tally[status] = tally.get(status, 0) + 1
        if status == 429:
            body = json.loads(data)  # the app's own 429: A1111's error body, Retry-After
            assert set(body) >= {"error", "detail", "body", "errors"} and "queue is full" in body["detail"]
            assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
    assert set(tally) <= {200, 429}, tally
    assert tally.get(200, 0) >= 1 and tally.get(429, 0) >= 1, tally
    stats = on_ray.ray.get(on_ray.counter.stats.remote())
    assert stats["granted"] - before["granted"] == tally[200]  # every served job held a slot of the shared bound
    assert stats["peak"] <= 2 and stats["held"] == 0 and stats["expired"] == 0


def test_killed_replica_answers_in_a1111_shape_and_gives_its_slot_back(on_ray):
    """A replica killed while it runs a job: the client gets a 503 in A1111's error shape (not Serve's
    plain-text 500), and the slot the job held is freed once the replica stops beating (not after
    max-queue x job-timeout), so the deployment takes --max-queue jobs again."""
    ray = on_ray.ray
    got = {}
    job = threading.Thread(
        target=lambda: got.update(
            r=_post(f"{on_ray.url}/sdapi/v1/txt2img", {**BODY, "steps": 150, "width": 64, "height": 64})
        )
    )
    job.start()
    holder = None
    for _ in range(1200):
        holders = ray.get(on_ray.counter.stats.remote())["holders"]
        if holders:
            (holder,) = holders
            break
        time.sleep(0.05)
    assert holder, "the job never took a slot"
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "BestshotReplica" in a["name"]]
    handles = [ray.get_actor(a["name"], namespace=a["namespace"]) for a in replicas]
    (victim,) = [h for h in handles if h._actor_id.hex() == holder]
    ray.kill(victim)
    job.join(300)
    status, headers, data = got["r"]
    assert status == 503, (status, data[:300])
    body = json.loads(data)
    assert set(body) >= {"error", "detail", "body", "errors"} and body["error"] == "ReplicaLost", body
    for _ in range(200):  # the grace is 3 s in this module
        stats = ray.get(on_ray.counter.stats.remote())
        if holder not in stats["holders"]:
            break
        time.sleep(0.1)
    assert holder not in stats["holders"] and stats["orphaned"] >= 1 and stats["held"] == 0, stats
