"""Secrets go only where they belong (issue 8 §4): no credentials over a redirect to another
origin (scheme, host and port), none on the mount daemon's command line or environment, and
private files (store, span cache) are created for their owner only."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hostile_http import Handler, HostileServer
from tls_cert import self_signed

from soci_native.registry import NotFound, RegistryClient, RegistryOptions

SECRET = "s3cret-pw"


def test_https_to_http_redirect_on_the_same_host_and_port_sends_no_credentials(
        tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    basic = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()

    def route(h: Handler) -> bool:
        if h.headers.get("Authorization") != basic:
            h.send_head(401, {"WWW-Authenticate": 'Basic realm="r"'}, length=0)
        else:  # authenticated: send the client to the same host and port in clear text
            h.send_head(307, {"Location": f"http://{h.headers['Host']}{h.path}"}, length=0)
        return True

    with HostileServer(route, tls=(cert, key), sniff_plain=True) as srv:
        opts = RegistryOptions(plain_http=False, ca_file=str(cert), creds=f"alice:{SECRET}")
        with RegistryClient(srv.host, opts) as c, pytest.raises(NotFound):
            c.get_manifest("r", "v1")
        assert srv.headers[-1].get("Authorization") == basic  # it did authenticate over TLS
        assert len(srv.plain_headers) == 1  # and followed the redirect in clear text ...
        plain = srv.plain_headers[0]
        assert plain["request-line"].startswith("GET /v2/r/manifests/v1 ")
        assert "Authorization" not in plain and SECRET not in repr(plain)  # ... without them


# ---- the mount daemon and private files ----------------------------------------------------

@pytest.fixture(scope="module")
def img(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import mnt_image as mi
    from test_mount import _unavailable

    why = _unavailable()
    if why is not None:
        pytest.skip(why)
    return mi.build(tmp_path_factory.mktemp("sec-img"))


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
            for p in [root, *root.rglob("*")] if not p.is_symlink()}


def test_mount_daemon_holds_no_secret_and_writes_private_files(img: Any,
                                                               tmp_path: Path) -> None:
    import mnt_image as mi
    import reg_server

    if not reg_server.available():
        pytest.skip("needs docker-registry (apt)")
    old = os.umask(0o022)  # the usual umask: what is private must be so by itself
    try:
        with reg_server.Registry.start(tmp_path / "reg", users={"alice": SECRET}) as r:
            ref = f"docker://{r.host}/sec/img"
            mi.run("skopeo", "copy", "-q", "--dest-tls-verify=false",
                   f"--dest-creds=alice:{SECRET}", f"oci:{img.layout}:t", f"{ref}:t")
            mi.cli("convert", f"{ref}:t", f"{ref}:soci", "--creds", f"alice:{SECRET}",
                   *mi.CREATE_OPTS, root=tmp_path / "builder")
            root, mp = tmp_path / "store", tmp_path / "mnt"
            mp.mkdir()
            p = mi.mount_cmd(f"{ref}:soci", str(mp), "--creds", f"alice:{SECRET}",
                             root=root, ok=False)
            if "not permitted" in p.stderr or "ermission denied" in p.stderr:
                pytest.skip(f"mounting FUSE is not permitted here: {p.stderr.strip()}")
            assert p.returncode == 0, p.stderr
            try:
                pid = int(p.stderr.split("(pid ", 1)[1].split(",", 1)[0])
                # the credentials reached it (it read the registry as alice) ...
                want = (img.ref / "data/modified.txt").read_bytes()
                assert (mp / "data/modified.txt").read_bytes() == want
                # ... but neither its command line nor its environment holds them
                for what in ("cmdline", "environ"):
                    raw = Path(f"/proc/{pid}/{what}").read_bytes()
                    assert raw and SECRET.encode() not in raw, what
            finally:
                mi.umount_cmd(mp, root)
                mi.force_unmount(mp)
    finally:
        os.umask(old)
    modes = _modes(root)
    assert modes["."] == 0o700 and modes["artifacts.db"] == 0o600
    spans = [k for k in modes if k.startswith("cache/spans/") and k.count("/") == 3]
    assert spans, sorted(modes)  # the read above cached spans
    loose = {k: oct(m) for k, m in modes.items() if m & 0o077}
    assert not loose, loose  # nothing in the store or the span cache is readable by others
