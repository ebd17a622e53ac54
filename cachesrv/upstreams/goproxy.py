"""Placeholder: `kind = "goproxy"` rules are being written (generic behaviour until then)."""

from __future__ import annotations

from . import generic
from .kind import Documents, base_key_url, no_declared_hash, plain_request

documents: Documents | None = None
encoded_slash = False
key_url = base_key_url
artifact_kind = generic.artifact_kind
declared_hash = no_declared_hash
upstream_request = plain_request
