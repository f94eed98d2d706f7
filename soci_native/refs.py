"""Registry image references: ``[docker://]HOST[:PORT]/REPO[:TAG][@DIGEST]``.

The grammar is the distribution project's (``reference/regexp.go``), applied the way Docker
normalises names:

* the first ``/``-separated component is a registry host when it contains a ``.`` or a ``:``,
  is ``localhost``, or has upper-case letters (a bracketed IPv6 address counts); otherwise the
  host is Docker Hub, ``docker.io``, and a one-component name gets ``library/`` in front
  (``alpine`` → ``docker.io/library/alpine``); ``index.docker.io`` is ``docker.io``;
* a repository is lower-case path components of ``[a-z0-9]`` separated by ``.``, ``_``,
  ``__`` or runs of ``-``; host plus repository is at most 255 characters;
* a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a digest is ``sha256:<64 hex>`` or
  ``sha512:<128 hex>`` (lower-case hex).

``str()`` gives the normalised form without a transport prefix, and
``Reference.parse(str(r)) == r``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_NAME_MAX = 255
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class InvalidReference(ValueError):
    """A malformed image reference; the message says which part is wrong."""


def _split_host(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"
                or first.lower() != first):
        host, repo = first, rest
    else:
        host, repo = DOCKER_HUB, name
    if host in _HUB_ALIASES:
        host = DOCKER_HUB
        if "/" not in repo:
            repo = "library/" + repo
    return host, repo


@dataclass(frozen=True)
class Reference:
    """A parsed registry reference. ``tag`` and ``digest`` are both optional; when neither is
    given, :attr:`reference` is ``latest``."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Reference:
        """Parses ``docker://…`` or a bare ``[HOST/]REPO[:TAG][@DIGEST]``."""
        if not isinstance(ref, str):
            raise InvalidReference(f"invalid reference {ref!r}: expected a string")
        s = ref[len("docker://"):] if ref.startswith("docker://") else ref
        if not s:
            raise InvalidReference(f"invalid reference {ref!r}: empty")
        name, at, digest = s.partition("@")
        if at:
            if not _DIGEST_RE.fullmatch(digest):
                raise InvalidReference(
                    f"invalid reference {ref!r}: bad digest {digest!r} (expected "
                    "sha256:<64 lowercase hex digits> or sha512:<128>)")
        tag: str | None = None
        colon, slash = name.rfind(":"), name.rfind("/")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1:]
            if not _TAG_RE.fullmatch(tag):
                raise InvalidReference(
                    f"invalid reference {ref!r}: bad tag {tag!r} (letters, digits, '_', '.', "
                    "'-', at most 128, not starting with '.' or '-')")
        if not name:
            raise InvalidReference(f"invalid reference {ref!r}: no repository name")
        host, repo = _split_host(name)
        if not _DOMAIN_RE.fullmatch(host):
            raise InvalidReference(f"invalid reference {ref!r}: bad registry host {host!r}")
        comps = repo.split("/")
        for c in comps:
            if not _PATH_COMPONENT_RE.fullmatch(c):
                low = "" if c.lower() == c else " (repository names must be lowercase)"
                raise InvalidReference(
                    f"invalid reference {ref!r}: bad repository component {c!r}{low}")
        if len(host) + 1 + len(repo) > _NAME_MAX:
            raise InvalidReference(f"invalid reference {ref!r}: name longer than {_NAME_MAX} "
                                 "characters")
        return cls(host, repo, tag, digest or None)

    @property
    def name(self) -> str:
        """``host/repository``."""
        return f"{self.host}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag (or
        ``latest``)."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The host serving the distribution API (Docker Hub's is ``registry-1.docker.io``)."""
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)

    def with_tag(self, tag: str | None) -> Reference:
        if tag is not None and not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r}")
        return replace(self, tag=tag)

    def with_digest(self, digest: str | None) -> Reference:
        if digest is not None and not _DIGEST_RE.fullmatch(digest):
            raise InvalidReference(f"invalid digest {digest!r}")
        return replace(self, digest=digest)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s


def host_name(host: str) -> str:
    """The host without its port (IPv6 brackets removed)."""
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.x.x.x`` and ``::1``, with or without a port."""
    h = host_name(host).lower()
    return h in _LOOPBACK or h.startswith("127.") and h.count(".") == 3


def looks_like_registry_ref(ref: str) -> bool:
    """True when a bare (transport-less) string names its registry host explicitly:
    ``host.name/repo…``, ``host:port/repo…`` or ``localhost/repo…``, and parses."""
    first, sep, _ = ref.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        return False
    try:
        Reference.parse(ref)
    except InvalidReference:
        return False
    return True


__all__ = ["DOCKER_HUB", "Reference", "InvalidReference", "is_loopback",
           "looks_like_registry_ref"]
