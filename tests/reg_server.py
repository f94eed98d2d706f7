"""A real registry for tests: Debian's ``docker-registry`` (CNCF distribution 2.8) on
127.0.0.1 with a free port, a temporary storage directory and a temporary config, optionally
with htpasswd (bcrypt) Basic auth.

    with Registry.start(tmp_path) as reg:                      # no auth
        reg.host  -> "127.0.0.1:PORT"
    with Registry.start(tmp_path, users={"alice": "pw"}) as reg: ...
    with Registry.start(tmp_path, auth=token_server.registry_auth_config(path)) as reg: ...

``start`` waits (bounded) until ``/v2/`` answers; ``stop`` terminates the process and waits
for it (kill after a grace period), so nothing is left running. ``blob_data_path`` is where
the filesystem driver keeps a blob's bytes (tests corrupt them there).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BINARY = "docker-registry"


def available() -> bool:
    return shutil.which(BINARY) is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bcrypt_entry(user: str, password: str) -> str:
    try:
        import bcrypt
    except ImportError:
        bcrypt = None
    if bcrypt is not None:
        h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        return f"{user}:{h}"
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "-C", "5", user, password], check=True,
                             capture_output=True, text=True).stdout
        return out.strip()
    raise RuntimeError("need Python bcrypt (pip) or htpasswd (apt: apache2-utils)")


class Registry:
    def __init__(self, root: Path, port: int, proc: subprocess.Popen[bytes], log: Path,
                 users: dict[str, str] | None, tls: bool = False) -> None:
        self.root = root
        self.port = port
        self.proc = proc
        self.log = log
        self.users = users or {}
        self.host = f"127.0.0.1:{port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.storage = root / "storage"

    @classmethod
    def start(cls, root: Path, users: dict[str, str] | None = None,
              auth: dict[str, Any] | None = None, tls: tuple[Path, Path] | None = None,
              timeout: float = 20.0) -> Registry:
        """``users``: htpasswd Basic auth; ``auth``: any other ``auth`` section (token);
        ``tls``: (certificate, key) PEM files to serve HTTPS with."""
        root.mkdir(parents=True, exist_ok=True)
        (root / "storage").mkdir(exist_ok=True)
        if users:
            htpasswd = root / "htpasswd"
            htpasswd.write_text("".join(_bcrypt_entry(u, p) + "\n" for u, p in users.items()))
            auth = {"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}}
        last = ""
        for _ in range(3):  # the port may be taken between choosing and binding it
            port = _free_port()
            config = root / "config.yml"
            cfg: dict[str, Any] = {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(root / "storage")},
                            "delete": {"enabled": True},
                            "maintenance": {"uploadpurging": {"enabled": False}}},
                "http": {"addr": f"127.0.0.1:{port}", "secret": "soci-native-tests"},
            }
            if auth:
                cfg["auth"] = auth
            if tls:
                cfg["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
            config.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
            log = root / "registry.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            reg = cls(root, port, proc, log, users, tls is not None)
            if reg._wait_ready(timeout):
                return reg
            reg.stop()
            last = log.read_text(errors="replace")[-2000:]
            if "address already in use" not in last:
                break
        raise RuntimeError(f"docker-registry did not start:\n{last}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                ctx = ssl._create_unverified_context()  # a readiness probe only
                with urllib.request.urlopen(self.url + "/v2/", timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return True
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def blob_data_path(self, digest: str) -> Path:
        alg, enc = digest.split(":", 1)
        return (self.storage / "docker" / "registry" / "v2" / "blobs" / alg / enc[:2] / enc
                / "data")

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
