"""The app's routes, one ``APIRouter`` per module, each handler a plain function that gets the app's
:class:`~bestshot.server.context.ServerContext` through ``ctx: Ctx`` (FastAPI's ``Depends``).

To add a route: write a module-level handler in the module of what it serves, decorated with that module's
``router`` (``@router.get("/loras", response_model=...)``), taking ``ctx: Ctx`` if it needs the server's
state. A new module goes into ``AUTHENTICATED`` (or ``PUBLIC``) below; ``create_app`` includes them in order.
"""

from __future__ import annotations

from . import a1111, controlnet, curate, gallery, native, progress, system, webui

# behind the server's auth (--token / --api-auth), in this order
AUTHENTICATED = (
    a1111.router,
    progress.router,
    system.router,
    native.router,
    curate.router,
    webui.router,
    controlnet.router,
)
PUBLIC = (gallery.router,)  # no data: the gallery page

__all__ = ["AUTHENTICATED", "PUBLIC"]
