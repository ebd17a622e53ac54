"""The app factory: routes, middlewares, and the state opened and closed in one place."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Config
from ..metrics import Metrics
from ..offline import OfflineSource
from ..store import Store
from ..upstreams.router import Router
from . import api
from .keys import CONFIG, STATE, STRICT
from .middleware import errors_middleware
from .proxy import proxy
from .state import ServerState

log = logging.getLogger("cachesrv.web")


def make_app(config: Config, *, strict: bool = False) -> web.Application:
    """Build the server for `config`. Nothing is opened until the app starts.

    `strict` (offline only) serves a `/@seed/` request only from that seed's entries.
    """
    app = web.Application(middlewares=[errors_middleware])
    app[CONFIG] = config
    app[STRICT] = strict
    app.cleanup_ctx.append(_state_ctx)
    api.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def _state_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = Store(config.store)
    removed = store.blobs.clean_tmp()
    if removed:
        log.info("removed %d temp files left by an interrupted write", removed)
    state = ServerState(
        config=config,
        store=store,
        router=Router(config.upstreams, config.server.max_url_length),
        metrics=Metrics(),
        mode=config.server.mode,
        offline=OfflineSource(store, strict=app[STRICT]),
    )
    state.set_mode(config.server.mode)
    app[STATE] = state
    yield
    await state.close()
