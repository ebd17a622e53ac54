"""Drive the real ``apt-get`` with fully private state (see /work/shared/PITFALLS.md, apt).

apt reads the file named by ``APT_CONFIG`` first, then ``Dir::Etc::Parts`` (normally the
machine's ``/etc/apt/apt.conf.d``), then ``Dir::Etc::main``. A ``-o Dir::Etc::Parts=...`` on
the command line comes too late: the system's snippets (proxies, docker-clean hooks,
``Acquire::GzipIndexes``...) are already read. So *every* private ``Dir::*`` setting goes
into our own ``APT_CONFIG`` file, and apt never reads or writes the machine's
``/etc/apt``, ``/var/lib/apt``, ``/var/cache/apt``, ``/var/log/apt`` or dpkg status.

Layout under ``workdir``::

    apt.conf                    the file APT_CONFIG names
    etc/sources.list            the sources line(s); etc/{apt.conf.d,sources.list.d,
                                preferences.d,trusted.gpg.d,auth.conf.d}/ stay empty
    state/lists/                downloaded indices (state/status: empty dpkg status)
    cache/archives/             apt's package cache (unused by ``apt-get download``)
    log/                        Dir::Log
    downloads/                  where ``download()`` saves .debs (AptClient.downloads)

Other settings: ``APT::Sandbox::User "root"`` (as root apt would otherwise download as
``_apt``, who cannot enter a 0700 tmp dir), ``Acquire::Languages "none"`` (no
Translation-* requests), ``Acquire::Retries "0"`` (a fault shows up at once, not after
retries), ``APT::Architectures`` = the native one only (no multi-arch surprises from
``dpkg --print-foreign-architectures``), and a proxy only when asked: otherwise
``Acquire::http::Proxy "DIRECT"`` plus an environment without any ``*_proxy`` variable.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .aptrepo import native_architecture

_PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy")
# Lines apt uses for failures and warnings; apt-get update can exit 0 with any of them.
_BAD_PREFIXES = ("Err:", "W:", "E:")


class AptClient:
    """A private apt-get: ``update()`` and ``download()`` against ``sources_line``.

    ``proxy`` (e.g. ``"http://127.0.0.1:3142"``) becomes ``Acquire::http::Proxy``;
    ``extra_conf`` is appended verbatim to the private apt.conf (e.g.
    ``'Acquire::Check-Valid-Until "false";'``). ``sources_line`` may hold several lines.
    """

    def __init__(
        self,
        workdir: Path,
        sources_line: str,
        *,
        proxy: str | None = None,
        extra_conf: str = "",
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.sources_line = sources_line
        self.proxy = proxy
        etc = self.workdir / "etc"
        state = self.workdir / "state"
        cache = self.workdir / "cache"
        self.downloads: Path = self.workdir / "downloads"
        self.lists: Path = state / "lists"
        for d in (
            etc / "apt.conf.d",
            etc / "sources.list.d",
            etc / "preferences.d",
            etc / "trusted.gpg.d",
            etc / "auth.conf.d",
            self.lists / "partial",
            cache / "archives" / "partial",
            self.workdir / "log",
            self.downloads,
        ):
            d.mkdir(parents=True, exist_ok=True)
        # World-readable, in case something still runs as _apt (belt and braces: the
        # sandbox user is root below).
        for d in (self.workdir, etc, state, cache, self.lists, self.downloads):
            d.chmod(0o755)
        (etc / "sources.list").write_text(sources_line.rstrip("\n") + "\n")
        (state / "status").touch()

        proxy_value = proxy if proxy is not None else "DIRECT"
        arch = native_architecture()
        self.config: Path = self.workdir / "apt.conf"
        self.config.write_text(
            f'Dir::State "{state}";\n'
            f'Dir::State::Lists "{self.lists}";\n'
            f'Dir::State::status "{state / "status"}";\n'
            f'Dir::Cache "{cache}";\n'
            f'Dir::Cache::Archives "{cache / "archives"}";\n'
            f'Dir::Log "{self.workdir / "log"}";\n'
            f'Dir::Etc "{etc}";\n'
            f'Dir::Etc::main "{etc / "apt.conf"}";\n'
            f'Dir::Etc::Parts "{etc / "apt.conf.d"}";\n'
            f'Dir::Etc::SourceList "{etc / "sources.list"}";\n'
            f'Dir::Etc::SourceParts "{etc / "sources.list.d"}";\n'
            f'Dir::Etc::Preferences "{etc / "preferences"}";\n'
            f'Dir::Etc::PreferencesParts "{etc / "preferences.d"}";\n'
            f'Dir::Etc::Trusted "{etc / "trusted.gpg"}";\n'
            f'Dir::Etc::TrustedParts "{etc / "trusted.gpg.d"}";\n'
            f'Dir::Etc::netrc "{etc / "auth.conf"}";\n'
            f'Dir::Etc::netrcparts "{etc / "auth.conf.d"}";\n'
            'APT::Sandbox::User "root";\n'
            f'APT::Architecture "{arch}";\n'
            f'APT::Architectures {{ "{arch}"; }};\n'
            'APT::Update::Error-Mode "any";\n'
            'Acquire::Languages "none";\n'
            'Acquire::Retries "0";\n'
            f'Acquire::http::Proxy "{proxy_value}";\n'
            'Acquire::https::Proxy "DIRECT";\n'
            'Acquire::http::Proxy-Auto-Detect "";\n'
            + (extra_conf.rstrip("\n") + "\n" if extra_conf else "")
        )

    def env(self) -> dict[str, str]:
        """The environment apt-get runs in: ours, minus proxies, plus APT_CONFIG."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in _PROXY_VARS and not k.startswith("APT_")
        }
        env["APT_CONFIG"] = str(self.config)
        env["LC_ALL"] = "C"  # English messages: the Err:/W:/E: checks depend on them
        env["DEBIAN_FRONTEND"] = "noninteractive"
        return env

    def run(
        self, *args: str, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``apt-get -q ARGS`` privately; with ``check``, fail on errors/warnings."""
        cmd = ["apt-get", "-q", *args]
        proc = subprocess.run(
            cmd,
            cwd=cwd or self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if check:
            self.check(proc)
        return proc

    def update(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``apt-get update`` with ``APT::Update::Error-Mode=any``.

        With ``check``, raise AssertionError (with the full output) if apt exits non-zero
        or prints any ``Err:``, ``W:`` or ``E:`` line.
        """
        return self.run("-o", "APT::Update::Error-Mode=any", "update", check=check)

    def download(self, *pkgs: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``apt-get download PKGS`` into :attr:`downloads`; ``check`` as in update().

        apt names the files ``name_version_arch.deb`` with the epoch's ``:`` as ``%3a``.
        """
        return self.run("download", *pkgs, check=check, cwd=self.downloads)

    def check(self, proc: subprocess.CompletedProcess[str]) -> None:
        """Raise AssertionError unless ``proc`` exited 0 without Err:/W:/E: lines."""
        bad = [
            line
            for line in (proc.stdout + "\n" + proc.stderr).splitlines()
            if line.startswith(_BAD_PREFIXES)
        ]
        if proc.returncode != 0 or bad:
            args = proc.args if isinstance(proc.args, list) else [str(proc.args)]
            raise AssertionError(
                f"apt-get failed: {' '.join(map(str, args))} (exit {proc.returncode})\n"
                + "".join(f"  {line}\n" for line in bad)
                + f"--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
                + f"--- {self.config} ---\n{self.config.read_text()}"
            )
