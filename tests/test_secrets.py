"""Secrets go only where they belong (issue 8 §4): no credentials over a redirect to another
origin (scheme, host and port), none on the mount daemon's command line or environment, and
private files (store, span cache) are created for their owner only."""

from __future__ import annotations

import base64
from pathlib import Path

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
