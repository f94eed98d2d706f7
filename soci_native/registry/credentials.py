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
        helpers = doc.get("credHelpers")
        helper = next((v for k, v in helpers.items() if isinstance(k, str)
                       and _auth_key(k) in candidates and isinstance(v, str)), None) \
            if isinstance(helpers, dict) else None
        helper_key = next((k for k in helpers if isinstance(k, str)
                           and _auth_key(k) in candidates), None) \
            if isinstance(helpers, dict) else None
        store = doc.get("credsStore") if isinstance(doc.get("credsStore"), str) else None
        # Docker's order: the host's own helper, else the store, else the file itself
        for name, server in ((helper, helper_key), (store, _helper_server(host))):
            if name and server:
                got, note = run_helper(name, server)
                if got is not None:
                    return Credentials(got[0], got[1], f"docker-credential-{name}"), notes
                if note:
                    notes.append(f"{path}: {note}")
        for c in candidates:
            if c in entries:
                got = _decode_entry(entries[c])
                if got is not None:
                    return Credentials(got[0], got[1], path), notes
                if isinstance(entries[c], Mapping) and entries[c].get("identitytoken"):
                    notes.append(f"{path}: the entry for {c} holds an identity token, which is "
                                 "not supported")
                elif not store:
                    notes.append(f"{path}: the entry for {c} has no usable auth or "
                                 "username/password")
    return None, notes


_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HELPER_TIMEOUT = 30.0


def _helper_server(host: str) -> str:
    """The server name a credential store knows a host by (Docker Hub's is its v1 URL)."""
    return "https://index.docker.io/v1/" if _auth_key(host) == DOCKER_HUB else host


def run_helper(name: str, server: str) -> tuple[tuple[str, str] | None, str]:
    """``docker-credential-NAME get`` with ``server`` on its standard input, as Docker runs
    credential helpers (ECR, GCR, ACR, desktop keychains): ((user, secret) or None, a note
    on why not)."""
    import shutil
    import subprocess

    if not _HELPER_NAME.fullmatch(name):
        return None, f"invalid credential helper name {name!r}"
    exe = shutil.which(f"docker-credential-{name}")
    if exe is None:
        return None, f"credential helper docker-credential-{name} is not on PATH"
    try:
        p = subprocess.run([exe, "get"], input=server.encode(), capture_output=True,
                           timeout=HELPER_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"docker-credential-{name} get failed: {e}"
    out = p.stdout.decode(errors="replace").strip()
    if p.returncode != 0:
        why = (out or p.stderr.decode(errors="replace").strip())[:200]
        if "credentials not found" in why.lower():
            return None, ""
        return None, f"docker-credential-{name} get exited {p.returncode}: {why}"
    try:
        doc = json.loads(out)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        return None, f"docker-credential-{name} get: not the JSON a helper answers"
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None, f"docker-credential-{name} get: no username and secret"
    if user == "<token>":
        return None, f"docker-credential-{name} holds an identity token, which is not supported"
    return (user, secret), ""
