"""How to reach a registry: :class:`RegistryOptions`."""

from __future__ import annotations

from dataclasses import dataclass

_USER_AGENT = "soci-native/0.1"


# ---- options ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegistryOptions:
    """How to reach a registry. ``plain_http`` None means: HTTPS, and for loopback hosts
    (localhost, 127.0.0.0/8, ::1) plain HTTP when the host does not speak TLS."""

    plain_http: bool | None = None
    insecure: bool = False          # HTTPS without certificate verification
    ca_file: str | None = None      # PEM CA bundle to verify with instead of the system's
    cert_dir: str | None = None     # CAs (*.crt), client certs (*.cert + *.key); else certs.d
    creds: str | None = None        # "user:password"; else the auth files are searched
    auth_file: str | None = None    # one auth.json / config.json to use instead of the search
    max_attempts: int = 6           # tries per request (and per stalled blob stream)
    timeout: float = 120.0          # seconds one operation may take, every try included
    backoff_base: float = 0.25      # first backoff ceiling, doubled each retry ...
    backoff_cap: float = 10.0       # ... up to this
    connect_timeout: float = 10.0   # to open a connection (TCP and TLS)
    read_timeout: float = 30.0      # with no byte received
    pool_size: int = 10             # connections kept per host
    user_agent: str = _USER_AGENT
