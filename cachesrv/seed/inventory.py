"""Inventories: what a store holds, so that the other site exports only the rest.

`cachesrv seed inventory -o FILE` at the receiving site writes a JSON file::

    {"format": "cachesrv-inventory", "version": 1, "created": "...", "host": "...",
     "digests": ["<64 hex>", ...],          # blobs present and not quarantined
     "entries": {"<key URL>": "<digest>"},  # entries whose blob is present
     "seeds":   {"<seed>": ["<key URL>", ...]}}

`cachesrv seed export --missing-from FILE` at the sending site reads it (see
`export.select`).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SeedError
from ..store import Store
from .bundle import HEX64, now_iso, write_atomic

FORMAT = "cachesrv-inventory"
VERSION = 1


@dataclass(frozen=True)
class Inventory:
    digests: frozenset[str]
    entries: dict[str, str]
    #: key URL -> the seeds it belongs to at that site
    seeds_of: dict[str, frozenset[str]] = field(default_factory=dict)
    host: str = ""
    created: str = ""


def make_inventory(store: Store) -> dict[str, Any]:
    """The inventory of `store`: what is on disk and usable, not what the index hopes."""
    index = store.index
    quarantined = set(index.quarantined())
    digests = sorted(d.hex for d in store.blobs.iter_digests() if d.hex not in quarantined)
    present = set(digests)
    entries = {e.key.url: e.digest.hex for e in index.entries() if e.digest.hex in present}
    seeds = {
        row["name"]: [k for k in index.seed_keys(row["name"]) if k in entries]
        for row in index.seeds()
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": now_iso(),
        "host": socket.gethostname(),
        "digests": digests,
        "entries": entries,
        "seeds": {name: keys for name, keys in seeds.items() if keys},
    }


def write_inventory(store: Store, out: Path | None) -> tuple[str, dict[str, Any]]:
    """Write the inventory to `out` (atomically) or return it as text for stdout."""
    inv = make_inventory(store)
    text = json.dumps(inv, indent=1) + "\n"
    if out is not None:
        try:
            write_atomic(out, text.encode())
        except OSError as exc:
            raise SeedError(f"cannot write {out}: {exc.strerror}") from None
    return text, inv


def read_inventory(path: Path) -> Inventory:
    try:
        obj = json.loads(path.read_bytes())
    except OSError as exc:
        raise SeedError(f"cannot read inventory {path}: {exc.strerror}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise SeedError(f"inventory {path} is not JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise SeedError(f"{path} is not a cachesrv inventory (make one with `seed inventory`)")
    if obj.get("version") != VERSION:
        raise SeedError(f"inventory {path}: unsupported version {obj.get('version')!r}")
    digests, entries, seeds = obj.get("digests"), obj.get("entries"), obj.get("seeds", {})
    problems: list[str] = []
    if not isinstance(digests, list) or not all(
        isinstance(d, str) and HEX64.fullmatch(d) for d in digests
    ):
        problems.append("digests is not a list of 64-hex digests")
        digests = []
    if not isinstance(entries, dict) or not all(
        isinstance(v, str) and HEX64.fullmatch(v) for v in entries.values()
    ):
        problems.append("entries is not a map of key URL -> digest")
        entries = {}
    if not isinstance(seeds, dict) or not all(
        isinstance(v, list) and all(isinstance(k, str) for k in v) for v in seeds.values()
    ):
        problems.append("seeds is not a map of seed -> key URLs")
        seeds = {}
    if problems:
        raise SeedError(f"inventory {path} is invalid", problems)
    seeds_of: dict[str, set[str]] = {}
    for name, keys in seeds.items():
        for key in keys:
            seeds_of.setdefault(key, set()).add(name)
    return Inventory(
        digests=frozenset(digests),
        entries=dict(entries),
        seeds_of={k: frozenset(v) for k, v in seeds_of.items()},
        host=str(obj.get("host", "")),
        created=str(obj.get("created", "")),
    )
