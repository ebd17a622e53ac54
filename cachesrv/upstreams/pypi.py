"""PyPI simple-index rules (`kind = "pypi"`): keys, links, page parsing and rewriting.

URLs under a pypi upstream named NAME:
- `/NAME/simple/` and `/NAME/simple/<project>/` -> the upstream index (PEP 503 HTML,
  or PEP 691 JSON, recorded under the key `<page>?format=<json type>`, the query
  PyPI itself honours);
- `/NAME/files/<scheme>/<host[:port]>/<path>` -> a distribution file or its PEP 658
  `.metadata`, on the index host or one of the upstream's `file_hosts`.

Pages are rewritten so every file link goes through cachesrv, with links relative
to the page (so a `/@seed/` prefix carries through). Only the `href` changes; the
`#sha256=` fragment, the `data-*` attributes and the JSON keys stay exactly as the
upstream sent them, except that an offline page drops files whose bodies are not
stored and the metadata attributes of files whose `.metadata` is not stored.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from ..config import UpstreamConfig
from ..errors import BadRequest, Forbidden
from . import generic
from .kind import Declared, Doc, FileRef, View, load_json, no_declared_hash
from .urls import canonical_escapes, file_url

encoded_slash = False
artifact_kind = generic.artifact_kind
declared_hash = no_declared_hash

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
JSON_QUERY = "?format=" + JSON_V1

_A_TAG = re.compile(r"<a\s([^>]*)>(.*?)</a>[ \t]*(?:<br\s*/?>)?[ \t]*\r?\n?", re.I | re.S)
_HREF = re.compile(r"""(\bhref\s*=\s*)(["'])(.*?)\2""", re.I | re.S)
# A project name (PEP 508), in any case: what pip and uv ask, normalized or not.
_PROJECT = re.compile(r"[A-Za-z0-9._-]+")
_METADATA_ATTR = re.compile(
    r"""\s+data-(?:dist-info|core)-metadata(?:\s*=\s*(["']).*?\1)?""", re.I | re.S
)


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def key_url(upstream: UpstreamConfig, path: str) -> str:
    """The canonical URL for a path under a pypi upstream (see module doc)."""
    if path == "simple" or path.startswith("simple/"):
        rest = path[len("simple") :].lstrip("/")
        project, sep, tail = rest.partition("/")
        if tail:
            raise Forbidden(f"no such index page: /{upstream.name}/simple/{rest}")
        if project and not _PROJECT.fullmatch(project):
            # Decoding `%3F`, `%23` or `%25` into the key would make it another URL.
            raise BadRequest(f"not a project name: {project[:100]!r}")
        if project:
            return f"{upstream.base}/{normalize(project)}/"
        return upstream.base + "/"
    if path.startswith("files/"):
        return file_url(upstream, path[len("files/") :])
    raise Forbidden(
        f"a pypi upstream serves /{upstream.name}/simple/ and /{upstream.name}/files/ only"
    )


def upstream_request(url: str) -> tuple[str, dict[str, str]]:
    """What to send upstream for a key: a JSON page key is fetched by `Accept`, since a
    `+` in a query string is easily read back as a space."""
    if url.endswith(JSON_QUERY):
        return url[: -len(JSON_QUERY)], {"Accept": JSON_V1}
    if url.endswith("/"):
        return url, {"Accept": f"{HTML_V1}, text/html;q=0.9"}
    return url, {}


def is_project_page(upstream: UpstreamConfig, url: str) -> bool:
    base = upstream.base + "/"
    rest = url.split("?", 1)[0][len(base) :] if url.startswith(base) else None
    return bool(rest) and rest.count("/") == 1 and rest.endswith("/")  # type: ignore[union-attr]


def is_index_page(upstream: UpstreamConfig, url: str) -> bool:
    return url.split("?", 1)[0].startswith(upstream.base + "/")


def wants_json(accept: str | None) -> bool:
    """Content negotiation per PEP 691: the highest q wins; on a tie, JSON."""
    best_json = best_html = -1.0
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if media == JSON_V1:
            best_json = max(best_json, q)
        elif media in (HTML_V1, "text/html", "*/*", "text/*", "application/*"):
            best_html = max(best_html, q)
    return best_json > 0 and best_json >= best_html


@dataclass(frozen=True)
class FileLink:
    """One distribution file listed on a project page."""

    url: str  # absolute upstream URL, no fragment
    filename: str
    sha256: str | None
    metadata_sha256: str | None  # the .metadata file's sha256, when declared
    has_metadata: bool


def local_href(upstream: UpstreamConfig, url: str, up: str) -> str | None:
    """The link through cachesrv for an absolute upstream URL, relative to the page."""
    base = upstream.base + "/"
    if url.startswith(base):
        return up + "simple/" + url[len(base) :]
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and upstream.allows_host(parts.netloc):
        return f"{up}files/{parts.scheme}/{parts.netloc}{parts.path}"
    return None


def _split_fragment(href: str) -> tuple[str, str]:
    url, sep, frag = href.partition("#")
    return url, (sep + frag)


def _hash_from(value: object) -> str | None:
    if isinstance(value, dict):
        v = value.get("sha256")
        return v.lower() if isinstance(v, str) else None
    if isinstance(value, str) and value.startswith("sha256="):
        return value[len("sha256=") :].lower()
    return None


def _link_from_attrs(attrs: str, page_url: str) -> FileLink | None:
    m = _HREF.search(attrs)
    if not m:
        return None
    href = html.unescape(m.group(3))
    url, frag = _split_fragment(href)
    absolute = canonical_escapes(urljoin(page_url, url))
    sha = _hash_from(frag[1:]) if frag else None
    meta_attr = re.search(
        r"""data-(?:core|dist-info)-metadata(?:\s*=\s*(["'])(.*?)\1)?""", attrs, re.I | re.S
    )
    meta_value = (meta_attr.group(2) or "true") if meta_attr else "false"
    meta_sha = _hash_from(html.unescape(meta_value))
    has_meta = meta_value.lower() != "false"
    filename = unquote(urlsplit(absolute).path.rsplit("/", 1)[-1])
    return FileLink(absolute, filename, sha, meta_sha, has_meta)


def parse_page(body: bytes, page_url: str, is_json: bool) -> list[FileLink]:
    """Every file link of a project page, with what the page declares about it."""
    if is_json:
        doc = _json_page(body)
        links = []
        for f in doc.get("files", []):
            absolute = canonical_escapes(urljoin(page_url, _split_fragment(f.get("url", ""))[0]))
            meta = f.get("core-metadata", f.get("dist-info-metadata", False))
            links.append(
                FileLink(
                    absolute,
                    f.get("filename") or absolute.rsplit("/", 1)[-1],
                    _hash_from(f.get("hashes", {})),
                    _hash_from(meta),
                    bool(meta),
                )
            )
        return links
    text = body.decode("utf-8", "replace")
    return [
        link
        for m in _A_TAG.finditer(text)
        if (link := _link_from_attrs(m.group(1), page_url)) is not None
    ]


#: Decides, for a file link, whether to list it and whether to keep its metadata.
Keep = Callable[[FileLink], tuple[bool, bool]]


def render_page(
    body: bytes,
    page_url: str,
    is_json: bool,
    upstream: UpstreamConfig,
    up: str,
    keep: Keep | None = None,
) -> bytes:
    """Rewrite a recorded page for clients of cachesrv (see module doc)."""
    if is_json:
        return _render_json(body, page_url, upstream, up, keep)
    return _render_html(body.decode("utf-8", "replace"), page_url, upstream, up, keep).encode()


def _render_html(
    text: str, page_url: str, upstream: UpstreamConfig, up: str, keep: Keep | None
) -> str:
    def one(m: re.Match[str]) -> str:
        attrs = m.group(1)
        link = _link_from_attrs(attrs, page_url)
        if link is None:
            return m.group(0)
        keep_meta = True
        if keep is not None:
            listed, keep_meta = keep(link)
            if not listed:
                return ""
        href = _HREF.search(attrs)
        assert href is not None
        _, frag = _split_fragment(html.unescape(href.group(3)))
        local = local_href(upstream, link.url, up)
        new_attrs = attrs
        if local is not None:
            quoted = html.escape(local + frag, quote=True)
            new_attrs = attrs[: href.start(3)] + quoted + attrs[href.end(3) :]
        if not keep_meta:
            new_attrs = _METADATA_ATTR.sub("", new_attrs)
        return m.group(0).replace(attrs, new_attrs, 1)

    return _A_TAG.sub(one, text)


def _render_json(
    body: bytes, page_url: str, upstream: UpstreamConfig, up: str, keep: Keep | None
) -> bytes:
    doc = _json_page(body)
    files = []
    for f in doc.get("files", []):
        url, frag = _split_fragment(f.get("url", ""))
        absolute = canonical_escapes(urljoin(page_url, url))
        meta = f.get("core-metadata", f.get("dist-info-metadata", False))
        link = FileLink(
            absolute,
            f.get("filename") or absolute.rsplit("/", 1)[-1],
            _hash_from(f.get("hashes", {})),
            _hash_from(meta),
            bool(meta),
        )
        keep_meta = True
        if keep is not None:
            listed, keep_meta = keep(link)
            if not listed:
                continue
        local = local_href(upstream, absolute, up)
        if local is not None:
            f["url"] = local + frag
        if not keep_meta:
            f.pop("core-metadata", None)
            f.pop("dist-info-metadata", None)
            f.pop("data-dist-info-metadata", None)
        files.append(f)
    if "files" in doc:
        doc["files"] = files
        versions = doc.get("versions")
        if isinstance(versions, list) and keep is not None:  # PEP 700: a list of strings
            doc["versions"] = sorted(
                {
                    v
                    for v in versions
                    if isinstance(v, str) and any(_has_version(f, v) for f in files)
                }
            )
    return json.dumps(doc).encode()


def _json_page(body: bytes) -> dict[str, Any]:
    """A PEP 691 page, checked for the shapes used here; ValueError if it is not one."""
    doc = load_json(body)
    files = doc.get("files", []) if isinstance(doc, dict) else None
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("url", ""), str) for f in files
    ):
        raise ValueError("not a PEP 691 project page (files must be a list of objects)")
    for f in files:
        if not isinstance(f.get("hashes", {}), dict) or not isinstance(f.get("filename", ""), str):
            raise ValueError(f"malformed file entry: {str(f)[:100]}")
    assert isinstance(doc, dict)
    return doc


def _has_version(f: dict[str, Any], version: str) -> bool:
    name = str(f.get("filename", ""))
    return f"-{version}-" in name or f"-{version}." in name or name.endswith(f"-{version}")


# -- the Documents rules -----------------------------------------------------------


class _Pages:
    """Simple-index pages as index documents (`kind.Documents`): HTML and JSON are two
    formats of one page, each recorded as its own entry."""

    def formats(self, upstream: UpstreamConfig, url: str, accept: str | None) -> list[Doc]:
        if not is_index_page(upstream, url):
            return []
        html_doc = Doc(url=url, key=url, format="html")
        json_doc = Doc(url=url, key=url + JSON_QUERY, format="json", content_type=JSON_V1)
        return [json_doc, html_doc] if wants_json(accept) else [html_doc, json_doc]

    def companions(self, upstream: UpstreamConfig, doc: Doc) -> tuple[str, ...]:
        return ()

    def files(
        self, upstream: UpstreamConfig, doc: Doc, body: bytes, companions: Mapping[str, bytes]
    ) -> list[FileRef]:
        if not is_project_page(upstream, doc.url):
            return []
        refs = []
        for link in parse_page(body, doc.url, doc.format == "json"):
            sha = Declared("sha256", link.sha256) if link.sha256 else None
            meta = Declared("sha256", link.metadata_sha256) if link.metadata_sha256 else None
            refs += [FileRef(link.url, sha), FileRef(link.url + ".metadata", meta)]
        return refs

    def declared_by(self, upstream: UpstreamConfig, url: str) -> str | None:
        return None

    def inventory(self, upstream: UpstreamConfig, doc: Doc) -> str | None:
        return None

    def render(self, upstream: UpstreamConfig, doc: Doc, body: bytes | None, view: View) -> bytes:
        assert body is not None
        stored = view.stored
        keep: Keep | None = None
        if stored is not None and is_project_page(upstream, doc.url):

            def keep(link: FileLink) -> tuple[bool, bool]:
                return link.url in stored, link.url + ".metadata" in stored

        return render_page(body, doc.url, doc.format == "json", upstream, view.up, keep)


documents = _Pages()
