"""docs/API.md is the app's route table: regenerated here and compared, so it cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from bestshot.server import create_app  # noqa: E402
from bestshot.server.routes_doc import A1111_ROUTES, route_table, routes  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "API.md"


def test_docs_api_md_matches_the_app(tmp_path):
    table = route_table(create_app(out_dir=str(tmp_path / "o")))
    assert DOC.read_text() == table, "docs/API.md is stale: python -m bestshot.server.routes_doc > docs/API.md"


def test_every_a1111_route_a_client_calls_is_served(tmp_path):
    ours = routes(create_app(out_dir=str(tmp_path / "o")))
    not_served = {k for k in A1111_ROUTES if k not in ours}
    assert all("/train/" in p or "/create/" in p or "/server-" in p for _, p in not_served), not_served
