"""Seed bundles: export, import, verify, and inventories (SPEC "Seed bundles").

- `bundle`: the on-disk format (names, manifest lines, metadata, sizes).
- `reader`: the checks on a bundle, shared by verify and import; nothing trusted.
- `export`: store -> bundle, resumable, metadata written last.
- `importer`: bundle -> store, all or nothing, idempotent and resumable.
- `inventory`: what a store holds, for `seed export --missing-from`.

docs/air-gap-workflow.md walks through the round trip.
"""

from __future__ import annotations

from .bundle import parse_size
from .export import ExportOptions, ExportReport, export_bundle
from .importer import ImportReport, import_bundle
from .inventory import read_inventory, write_inventory
from .reader import VerifyReport, verify_bundle

__all__ = [
    "ExportOptions",
    "ExportReport",
    "ImportReport",
    "VerifyReport",
    "export_bundle",
    "import_bundle",
    "parse_size",
    "read_inventory",
    "verify_bundle",
    "write_inventory",
]
