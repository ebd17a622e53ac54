"""Typed keys for what the app holds."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from .state import ServerState

CONFIG = web.AppKey("config", Config)
STATE = web.AppKey("state", ServerState)
STRICT = web.AppKey("strict", bool)
CLEAN_TMP = web.AppKey("clean_tmp", bool)
