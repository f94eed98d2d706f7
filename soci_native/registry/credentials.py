"""Credentials from the Docker and Podman auth files."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from soci_native.refs import DOCKER_HUB

# ---- credentials -----------------------------------------------------------------------------

def auth_file_paths(explicit: str | None = None) -> list[str]:
    """Where credentials are looked for, in order: ``$REGISTRY_AUTH_FILE``,
    ``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.config/containers/auth.json``,
    ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    if explicit:
        return [explicit]
    out: list[str] = []
    env = os.environ
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(env["REGISTRY_AUTH_FILE"])
    if env.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    home = os.path.expanduser("~")
    out.append(os.path.join(home, ".config", "containers", "auth.json"))
    docker_dir = env.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    out.append(os.path.join(docker_dir, "config.json"))
    return out


def _auth_key(key: str) -> str:
    """An ``auths`` key as ``host[/path]``: scheme, ``/v1/``/``/v2/`` and slashes dropped,
    Docker Hub's aliases mapped to docker.io."""
    k = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key.strip(), flags=re.I)
    host, _, path = k.partition("/")
    path = re.sub(r"^(v1|v2)(/|$)", "", path.strip("/")).strip("/")
    host = host.lower()
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    return f"{host}/{path}" if path else host


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # "creds option" or the file it came from


def _decode_entry(entry: Any) -> tuple[str, str] | None:
    if not isinstance(entry, Mapping):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, pw = base64.b64decode(auth, validate=False).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return (user, pw) if sep else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return name, secret
    return None


def find_credentials(host: str, repository: str | None = None,
                     files: Iterable[str] | None = None) -> tuple[Credentials | None, list[str]]:
    """Credentials for ``host`` (and ``repository``: a ``host/namespace`` key matches it
    more specifically than ``host``) from the first auth file that has an entry. Returns
    (credentials or None, notes on what was found but cannot be used)."""
    want = _auth_key(host)
    candidates = [want]
    if repository:
        parts = repository.split("/")
        candidates = [f"{want}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)] + [want]
    notes: list[str] = []
    for path in list(files) if files is not None else auth_file_paths():
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            notes.append(f"{path}: unreadable ({e})")
            continue
        if not isinstance(doc, dict):
            continue
        auths = doc.get("auths")
        entries: dict[str, Any] = {}
        if isinstance(auths, dict):
            for k, v in auths.items():
                if isinstance(k, str):
                    entries.setdefault(_auth_key(k), v)
        for c in candidates:
            if c in entries:
                got = _decode_entry(entries[c])
                if got is not None:
                    return Credentials(got[0], got[1], path), notes
                if isinstance(entries[c], Mapping) and entries[c].get("identitytoken"):
                    notes.append(f"{path}: the entry for {c} holds an identity token, which is "
                                 "not supported")
                else:
                    notes.append(f"{path}: the entry for {c} has no usable auth or "
                                 "username/password")
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict) and any(
                isinstance(k, str) and _auth_key(k) == want for k in helpers):
            notes.append(f"{path}: {host} uses a credential helper (credHelpers), which is "
                         "not supported")
        elif doc.get("credsStore"):
            notes.append(f"{path}: credentials may be in the credential store "
                         f"{doc['credsStore']!r} (credsStore), which is not supported")
    return None, notes
