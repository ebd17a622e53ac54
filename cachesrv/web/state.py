"""The per-app server state, kept under one `web.AppKey`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ..config import Config
from ..metrics import Metrics
from ..models import Mode
from ..sources.base import Source
from ..sources.chains import offline_source, online_source
from ..sources.online import make_session
from ..store import Store
from ..tls.ca import LocalCA
from ..upstreams.router import Router
from .target import Tunnel


@dataclass
class ServerState:
    """What handlers need. The source is chosen here, once per mode, never in handlers."""

    config: Config
    store: Store
    router: Router
    metrics: Metrics
    mode: Mode
    #: The local CA that mints certificates for CONNECT tunnels (tls/ca.py).
    ca: LocalCA
    offline: Source
    online: Source | None = None
    session: aiohttp.ClientSession | None = None
    started: float = field(default_factory=time.time)
    #: Open CONNECT tunnels, by the aiohttp handler serving each (web/connect.py).
    tunnels: dict[web.RequestHandler, Tunnel] = field(default_factory=dict)

    @property
    def source(self) -> Source:
        if self.mode is Mode.OFFLINE:
            return self.offline
        assert self.online is not None
        return self.online

    @classmethod
    def wire(cls, config: Config, store: Store, *, strict: bool) -> ServerState:
        """Build the state: offline is lookups only; pypi pages and the snap store
        wrap either source."""
        state = cls(
            config=config,
            store=store,
            router=Router(config.upstreams, config.server.max_url_length, config.tls),
            metrics=Metrics(),
            mode=config.server.mode,
            ca=LocalCA.ensure(config.ca_dir),
            offline=offline_source(store, strict=strict),
        )
        state.set_mode(config.server.mode)
        return state

    def set_mode(self, mode: Mode) -> None:
        """Switch mode at run time (admin API). Going online opens the HTTP session."""
        if mode is Mode.ONLINE and self.online is None:
            self.session = make_session(self.config)
            self.online = online_source(self.config, self.store, self.session, self.metrics)
        self.mode = mode

    async def close(self) -> None:
        if self.online is not None:
            await self.online.close()
        if self.session is not None:
            await self.session.close()
        self.store.close()
