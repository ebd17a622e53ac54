"""SBOMs of a store or of named seeds: `cachesrv seed sbom`, and `sbom.cdx.json` in bundles.

One component per recorded *artifact* (`purls.is_artifact`): an immutable body that is a
package or a file a build used (`.deb`, `.dsc` and source tarballs, wheels and sdists,
snaps, npm tarballs, plain downloads), never mutable metadata (apt indices, simple pages,
snap store answers, git) nor files that only describe artifacts (apt `by-hash/` copies
of indices, PEP 658 `.metadata`).

Each component carries a package URL (purl-spec), the body's sha256 and blake3, the URL
it was recorded from and when. Names and versions come from the file name, except where
the store holds something better: a `.deb` or source file listed (with the same sha256)
in a recorded `Packages`/`Sources` index gets that index's name, version (with its epoch,
which pool file names drop) and architecture; a snap gets its name and revision from the
recorded store answer that pointed at it.

Both formats are written here with `json`: CycloneDX 1.5 and SPDX 2.3 documents of this
shape are small, and the libraries that model them cost more than they give (the
CycloneDX project's Python library takes quadratic time in its component count: 90 s
for 20,000 components; the SPDX one pulls in rdflib). The tests validate the output
with both: against the CycloneDX 1.5 JSON schema that `cyclonedx-python-lib` ships, and
with `spdx-tools`' validator. Package URLs are built by `packageurl-python`, the
reference implementation of the purl spec.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import lzma
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from packageurl import PackageURL

from .. import __version__
from ..errors import SeedError
from ..models import ArtifactKind, Entry
from ..store import Store
from .bundle import BUNDLE_SBOM
from .purls import Identity, is_artifact, purl_of, role_of

__all__ = [
    "BUNDLE_SBOM",
    "FORMATS",
    "Artifact",
    "Identity",
    "artifacts_of",
    "collect",
    "identities",
    "is_artifact",
    "purl_of",
    "sbom_cyclonedx",
    "sbom_spdx",
    "select_entries",
    "write_sbom",
]

#: The SBOM every bundle carries (beside the manifest, written before the metadata).
FORMATS = ("cyclonedx", "spdx")
#: Recorded snap store answers larger than this are not read for snap names.
_MAX_ANSWER = 16 << 20

#: The start of a download location SPDX 2.3 accepts (its validators' URL pattern).
_SPDX_URL = re.compile(
    r"(?:https?|s?ftp)://(?:[^/@\s]+@)?[a-z0-9]+(?:[-.][a-z0-9]+)*\.[a-z]{2,5}", re.I
)
_INDEX_NAME = re.compile(r"(?:Packages|Sources)(?:\.(?:gz|xz|bz2))?")


@dataclass(frozen=True)
class Artifact:
    """One SBOM component: a recorded entry and what it is."""

    entry: Entry
    purl: PackageURL
    #: CycloneDX component type / SPDX primary purpose: library, application or file.
    role: str
    sha3_384: str | None = None

    @property
    def url(self) -> str:
        return self.entry.key.url

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])


# -- collecting -----------------------------------------------------------------------


def artifacts_of(
    entries: Iterable[Entry],
    kinds: Mapping[str, str],
    known: Mapping[str, Identity] | None = None,
) -> list[Artifact]:
    """The artifacts among `entries` (ordered by URL); `kinds` maps upstream names to
    their kinds, `known` URLs to what recorded indices say they are."""
    found: list[Artifact] = []
    for e in sorted(entries, key=lambda e: e.key.url):
        kind = kinds.get(e.key.upstream)
        ident = (known or {}).get(e.key.url)
        purl = purl_of(e, kind, ident)
        if purl is not None:
            sha3 = ident.sha3_384 if ident is not None else None
            found.append(Artifact(e, purl, role_of(purl), sha3))
    return found


def select_entries(store: Store, seeds: Sequence[str]) -> list[Entry]:
    """The entries of these seeds (every entry when none is named)."""
    index = store.index
    entries = index.entries()
    if not seeds:
        return entries
    names = {r["name"] for r in index.seeds()}
    unknown = [s for s in seeds if s not in names]
    if unknown:
        raise SeedError(
            f"no seed named {', '.join(map(repr, unknown))} in {store.root} "
            "(see `cachesrv seed list`)"
        )
    keys = {k for s in seeds for k in index.seed_keys(s)}
    return [e for e in entries if e.key.url in keys]


def collect(store: Store, entries: Sequence[Entry], kinds: Mapping[str, str]) -> list[Artifact]:
    """The artifacts among `entries`, named with what the store's indices say."""
    return artifacts_of(entries, kinds, identities(store, entries))


def identities(store: Store, wanted: Sequence[Entry]) -> dict[str, Identity]:
    """What recorded apt indices and snap store answers say the `wanted` files are.

    Indices recorded with the wanted files are read first, then the rest of the store's,
    newest first, until every wanted file is named. A file whose index lists another
    sha256 is not named by it. Unreadable or foreign bodies are skipped.
    """
    debs = {e.key.url: e.sha256 for e in wanted if is_artifact(e) and "/pool/" in e.key.url}
    snaps = {e.key.url for e in wanted if is_artifact(e) and e.key.url.endswith(".snap")}
    found: dict[str, Identity] = {}
    if not debs and not snaps:
        return found
    mine = {e.key.url for e in wanted}
    candidates = sorted(store.index.entries(), key=lambda e: (e.key.url not in mine, -e.recorded))
    roots = {url.split("/pool/", 1)[0] for url in debs}
    read: set[str] = set()  # an index and its by-hash copies share one body
    for e in candidates:
        url = e.key.url
        if e.digest.hex in read:
            continue
        if debs and "/dists/" in url and url.split("/dists/", 1)[0] in roots:
            name = url.rsplit("/", 1)[-1]
            if _INDEX_NAME.fullmatch(name) or (
                "/by-hash/" in url and ("/binary-" in url or "/source/" in url)
            ):
                read.add(e.digest.hex)
                for file_url, sha256, ident in _index_files(store, e):
                    if debs.get(file_url) == sha256:
                        found[file_url] = ident
                        del debs[file_url]
        elif snaps and e.kind is ArtifactKind.MUTABLE and "/v2/snaps/" in url:
            for file_url, ident in _snap_files(store, e):
                if file_url in snaps:
                    found[file_url] = ident
                    snaps.discard(file_url)
        if not debs and not snaps:
            break
    return found


def _open_text(path: Path) -> IO[str]:
    """A recorded index as text, whatever compression apt fetched it with."""
    with path.open("rb") as f:
        head = f.read(6)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    if head.startswith(b"BZh"):
        return bz2.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def _index_files(store: Store, e: Entry) -> Iterator[tuple[str, str, Identity]]:
    """(URL, sha256, identity) of every file a recorded Packages or Sources index lists."""
    root = e.key.url.split("/dists/", 1)[0]
    try:
        with _open_text(store.blobs.path(e.digest)) as f:
            for stanza in _stanzas(f):
                name, version = stanza.get("Package"), stanza.get("Version")
                if not name or not version:
                    continue
                if "Filename" in stanza:
                    arch = stanza.get("Architecture") or None
                    yield (
                        f"{root}/{stanza['Filename']}",
                        stanza.get("SHA256", ""),
                        Identity(name, version, arch),
                    )
                elif "Directory" in stanza:
                    for line in stanza.get("Checksums-Sha256", "").splitlines():
                        fields = line.split()
                        if len(fields) == 3:
                            yield (
                                f"{root}/{stanza['Directory']}/{fields[2]}",
                                fields[0],
                                Identity(name, version, "source"),
                            )
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return


_STANZA_FIELDS = frozenset(
    ("Package", "Version", "Architecture", "Filename", "SHA256", "Directory", "Checksums-Sha256")
)


def _stanzas(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """deb822 paragraphs, only the fields used here; stops at once on a body that does
    not start like a Packages or Sources index."""
    fields: dict[str, str] = {}
    last = ""
    first = True
    for line in lines:
        if first and line.strip():
            if not line.startswith("Package:"):
                return
            first = False
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
        elif line[0] in " \t":
            if last == "Checksums-Sha256":
                fields[last] += line.strip() + "\n"
        else:
            name, _, value = line.partition(":")
            last = name
            if name in _STANZA_FIELDS:
                fields[name] = value.strip() + ("\n" if name == "Checksums-Sha256" else "")
    if fields:
        yield fields


def _snap_files(store: Store, e: Entry) -> Iterator[tuple[str, Identity]]:
    """(download URL, identity) of the snaps a recorded refresh result or info answer names."""
    if e.size > _MAX_ANSWER:
        return
    try:
        doc = json.loads(store.blobs.path(e.digest).read_bytes())
    except (OSError, ValueError):
        return
    if not isinstance(doc, dict):
        return
    top: dict[str, Any] = doc["snap"] if isinstance(doc.get("snap"), dict) else {}
    for s in [top, *(doc.get("channel-map") or [])]:
        if not isinstance(s, dict) or not isinstance(s.get("download"), dict):
            continue
        dl: dict[str, Any] = s["download"]
        name = s.get("name") or top.get("name") or doc.get("name")
        rev = s.get("revision")
        if isinstance(dl.get("url"), str) and isinstance(name, str) and rev is not None:
            sha3 = dl.get("sha3-384")
            yield dl["url"], Identity(name, str(rev), None, sha3 if isinstance(sha3, str) else None)


# -- writing --------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sbom_cyclonedx(artifacts: Sequence[Artifact], subject: str) -> str:
    """CycloneDX 1.5 JSON: one component per artifact (bom-ref: its URL)."""
    components: list[dict[str, Any]] = []
    for a in artifacts:
        e = a.entry
        hashes = [
            {"alg": "SHA-256", "content": e.sha256},
            {"alg": "BLAKE3", "content": e.digest.hex},
        ]
        if a.sha3_384:
            hashes.append({"alg": "SHA3-384", "content": a.sha3_384})
        c: dict[str, Any] = {"type": a.role, "bom-ref": a.url}
        if a.purl.namespace and a.purl.type in ("npm", "golang"):
            c["group"] = a.purl.namespace
        c["name"] = a.purl.name
        if a.purl.version:
            c["version"] = a.purl.version
        c["hashes"] = hashes
        c["purl"] = a.purl.to_string()
        c["externalReferences"] = [{"type": "distribution", "url": a.url}]
        c["properties"] = [
            {"name": "cachesrv:recorded", "value": _iso(e.recorded)},
            {"name": "cachesrv:upstream", "value": e.key.upstream},
        ]
        components.append(c)
    doc = {
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": _iso(time.time()),
            "tools": {
                "components": [{"type": "application", "name": "cachesrv", "version": __version__}]
            },
            "properties": [{"name": "cachesrv:subject", "value": subject}],
        },
        "components": components,
    }
    return json.dumps(doc, indent=2) + "\n"


def sbom_spdx(artifacts: Sequence[Artifact], subject: str) -> str:
    """SPDX 2.3 JSON: one package per artifact, described by the document."""
    tool = f"Tool: cachesrv-{__version__}"
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", subject).strip("-") or "store"
    packages: list[dict[str, Any]] = []
    for i, a in enumerate(artifacts, 1):
        e = a.entry
        checksums = [
            {"algorithm": "SHA256", "checksumValue": e.sha256},
            {"algorithm": "BLAKE3", "checksumValue": e.digest.hex},
        ]
        if a.sha3_384:
            checksums.append({"algorithm": "SHA3-384", "checksumValue": a.sha3_384})
        pkg: dict[str, Any] = {
            "SPDXID": f"SPDXRef-Package-{i}-" + re.sub(r"[^A-Za-z0-9.-]+", "-", a.purl.name)[:80],
            "name": a.purl.name,
            "packageFileName": a.filename,
            # SPDX's validators take only URLs on a host with a DNS name (the pattern in
            # the spec); an upstream at an IP address is told in `sourceInfo` alone.
            "downloadLocation": a.url if _SPDX_URL.match(a.url) else "NOASSERTION",
            "sourceInfo": f"recorded by cachesrv from {a.url}",
            "filesAnalyzed": False,
            "checksums": checksums,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": a.role.upper(),
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": a.purl.to_string(),
                }
            ],
            "annotations": [
                {
                    "annotationDate": _iso(e.recorded),
                    "annotationType": "OTHER",
                    "annotator": tool,
                    "comment": f"cachesrv:recorded from upstream {e.key.upstream}",
                }
            ],
        }
        if a.purl.version:
            pkg["versionInfo"] = a.purl.version
        packages.append(pkg)
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": subject,
        "documentNamespace": f"https://spdx.org/spdxdocs/cachesrv-{slug}-{uuid.uuid4()}",
        "creationInfo": {"created": _iso(time.time()), "creators": [tool]},
        "packages": packages,
        "relationships": [
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": p["SPDXID"],
            }
            for p in packages
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def write_sbom(artifacts: Sequence[Artifact], subject: str, fmt: str = "cyclonedx") -> str:
    """The SBOM text in `fmt` (`FORMATS`)."""
    if fmt == "cyclonedx":
        return sbom_cyclonedx(artifacts, subject)
    if fmt == "spdx":
        return sbom_spdx(artifacts, subject)
    raise ValueError(f"unknown SBOM format {fmt!r} (one of {', '.join(FORMATS)})")
