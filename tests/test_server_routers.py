"""The server's shape: ``create_app`` only wires things (context, middleware, error handlers, routers), and
every route is a plain module-level function in ``server/routes`` that gets the app's context by ``Depends``
— so two apps never share state, and a route is added by decorating one function."""

from __future__ import annotations

import inspect
import sys

import pytest

pytest.importorskip("fastapi")

from fastapi.routing import APIRoute  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from bestshot.server import create_app  # noqa: E402
from bestshot.server.context import ServerContext  # noqa: E402

try:  # FastAPI >= 0.16x keeps included routers as lazy branches; this walks them
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI flattens included routes into app.routes
    iter_route_contexts = None


def api_routes(app) -> list:
    routes = [c.original_route for c in iter_route_contexts(app.routes)] if iter_route_contexts else app.routes
    return [r for r in routes if isinstance(r, APIRoute)]


def test_create_app_is_at_most_80_lines():
    lines = inspect.getsource(create_app).splitlines()
    assert len(lines) <= 80, f"create_app is {len(lines)} lines: move routes and helpers into server/routes"


def test_every_route_is_a_module_level_function(tmp_path):
    routes = api_routes(create_app(out_dir=str(tmp_path / "o"), curate_dir=str(tmp_path / "c")))
    assert len(routes) > 40  # the whole API, not an empty walk
    for route in routes:
        fn = route.endpoint
        where = f"{' '.join(sorted(route.methods))} {route.path}: {fn.__module__}.{fn.__qualname__}"
        assert "<locals>" not in fn.__qualname__, where
        assert getattr(sys.modules[fn.__module__], fn.__name__) is fn, where
        assert fn.__module__.startswith("bestshot.server."), where


def test_each_app_has_its_own_context(tmp_path):
    """Routers are module-level and shared; the state is per app (POST /options of one leaves the other)."""
    one = create_app(out_dir=str(tmp_path / "a"), curate_dir=str(tmp_path / "ca"))
    two = create_app(out_dir=str(tmp_path / "b"), curate_dir=str(tmp_path / "cb"), best_of=3)
    assert isinstance(one.state.ctx, ServerContext) and one.state.ctx is not two.state.ctx
    assert one.state.jobs is one.state.ctx.jobs and one.state.store is one.state.ctx.store
    with TestClient(one, base_url="http://localhost") as a, TestClient(two, base_url="http://localhost") as b:
        assert a.post("/sdapi/v1/options", json={"bestshot_best_of": 2, "some_option": 1}).status_code == 200
        assert a.get("/sdapi/v1/options").json()["bestshot_best_of"] == 2
        got = b.get("/sdapi/v1/options").json()
        assert got["bestshot_best_of"] == 3 and "some_option" not in got
        assert b.get("/sdapi/v1/cmd-flags").json()["outdir_samples"].endswith("b")


def test_auth_covers_the_routers_but_not_the_gallery_page(tmp_path):
    app = create_app(out_dir=str(tmp_path / "o"), curate_dir=str(tmp_path / "c"), token="s3cret")
    with TestClient(app, base_url="http://localhost") as c:
        for path in ("/sdapi/v1/options", "/sdapi/v1/progress", "/v1/jobs", "/v1/curate", "/internal/ping", "/config"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "HTTPException", path
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        assert c.get("/").status_code == 200
