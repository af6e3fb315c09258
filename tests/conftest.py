import os
import sys
from pathlib import Path

# No test waits on the network: with these set before any Hugging Face library loads, a hub id that is not in the
# local cache fails at once (as bestshot's own hub check does) instead of retrying with backoff.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# One thread: tests run tiny models, where a second thread only adds contention (measured: tiny
# RRDBNet forward 2 ms on 1 thread vs 1.7 s on 2 busy threads).
torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under xdist (``-n auto``, ``--dist loadgroup`` from pyproject.toml) every test that uses the session's
    local Ray (``ray_local``) runs on one worker, in file order: one Ray per test session, as without xdist.
    The test_ray_*.py files say so themselves (``pytestmark``); this catches a new test elsewhere. Runs before
    xdist's own hook, which reads the mark."""
    ray = pytest.mark.xdist_group("ray")
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()) and item.get_closest_marker("xdist_group") is None:
            item.add_marker(ray)
    if hasattr(config, "workerinput"):  # an xdist worker (which sets its own numprocesses to None)
        # longest first: the Ray group (minutes on one worker) and the slow tests start at once, the many short
        # tests fill the other workers around them, so no long test is left running alone at the end. xdist's
        # controller schedules in the order its workers collected (whole groups first: --loadscope-reorder)
        def rank(item) -> int:
            group = item.get_closest_marker("xdist_group")
            if group is not None and group.args[:1] == ("ray",):
                return 0
            return 1 if item.get_closest_marker("slow") else 2

        items.sort(key=rank)  # stable: file order within each rank


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts and ends on one torch thread. The bench scripts the smoke tests run in-process set
    their own count (``--threads``); left behind, it changed later in-process renders by a rounding step, and
    the --ray tests, which compare them bit for bit with 1-CPU Ray workers, failed after them."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


def _lazy(tiny_dir, name):
    import tiny_models

    folder = tiny_dir / name
    if not (folder / "config.json").exists() and not (folder / "model_index.json").exists():
        getattr(tiny_models, f"build_{name}")(folder)
    return str(folder)


def _tiny_fixture(name):
    @pytest.fixture(scope="session")
    def fixture(tiny_dir):
        return _lazy(tiny_dir, name)

    fixture.__doc__ = f"Folder of a tiny random {name} built by tests/tiny_models.py (once per session)."
    return fixture


tiny_sdxl = _tiny_fixture("sdxl")
tiny_refiner = _tiny_fixture("sdxl_refiner")
tiny_sd3 = _tiny_fixture("sd3")
tiny_sd15 = _tiny_fixture("sd15")
tiny_clip = _tiny_fixture("clip")
tiny_world = _tiny_fixture("world")


@pytest.fixture(scope="session")
def bank_cache(request, tmp_path_factory):
    """A folder for the interrogator's embedded prompt banks, shared by the tests in a session: pytest's cache
    (kept between runs) when the cache plugin is on, else a session temp folder (``-p no:cacheprovider``, which
    read-only checkouts use)."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("bestshot-interrogate") if cache is not None else tmp_path_factory.mktemp("bestshot-interrogate")


@pytest.fixture
def out(tmp_path):
    """Output settings that keep every test's files in its own folder."""
    return dict(out_dir=str(tmp_path / "images_out"), log_jsonl=str(tmp_path / "images_log.jsonl"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for the whole test session, shared by every --ray test (started on first use).

    Starting Ray costs seconds, so no test starts its own; tests that need a fresh process (fault tests)
    run their driver in a subprocess that joins this cluster through ``RAY_ADDRESS``. Yields
    ``(ray, address, startup_s)``: the module, the cluster's GCS address and the seconds Ray took to start.
    """
    import time
    from types import SimpleNamespace

    import ray

    from bestshot.scale.cluster import connect

    start = time.perf_counter()
    connect(num_cpus=2)
    info = SimpleNamespace(
        ray=ray, address=ray.get_runtime_context().gcs_address, startup_s=time.perf_counter() - start
    )
    yield info
    ray.shutdown()
