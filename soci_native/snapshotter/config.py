"""The snapshotter's TOML configuration (``--config FILE``; ``snapshotter config default``
prints the defaults below, which is also a valid file)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TOML = """\
# soci-native snapshotter configuration (TOML). Every key is optional.

# The soci-native store holding SOCI indexes and zTOCs (the --root of `soci-native create`).
# Indexes found in a registry are pulled into it. "" = <snapshotter root>/store.
store_root = ""

# Layers smaller than this many bytes (compressed) are left to containerd's normal unpack.
min_layer_size = 0

# Seconds each step of a lazy mount may take (a registry operation with its retries, the FUSE
# mount coming up) before the layer falls back to containerd's normal unpack.
mount_timeout = 30.0

# Remote Prepares (index discovery + mount setup) handled at once; more wait their turn.
max_concurrent_mounts = 4

# gRPC worker threads.
grpc_workers = 8

# Fetch the spans an index's prefetch artifacts list (`soci-native create --prefetch-file`)
# right after each layer is mounted, in the background, a few at once: the files a container
# reads first are then cached before it asks for them.
prefetch = true

[cache]
# Uncompressed span cache of one mounted layer (least recently used spans go first).
max_bytes_per_layer = 1073741824

[background_fetch]
# Spans per second fetched behind the reads for each mounted layer (0: off).
spans_per_second = 0.0

[registry]
# Credentials file (auth.json / Docker config.json); "" = the usual search.
auth_file = ""
# HTTPS without certificate verification.
insecure = false
# Tries per registry request.
retries = 6
"""


@dataclass
class Config:
    store_root: str = ""
    min_layer_size: int = 0
    mount_timeout: float = 30.0
    max_concurrent_mounts: int = 4
    grpc_workers: int = 8
    prefetch: bool = True
    cache_max_bytes_per_layer: int = 1 << 30
    background_spans_per_second: float = 0.0
    registry_auth_file: str = ""
    registry_insecure: bool = False
    registry_retries: int = 6


_SECTIONS = {"cache": "cache_", "background_fetch": "background_",
             "registry": "registry_"}


class ConfigError(ValueError):
    pass


def _check(name: str, value: Any, default: Any) -> Any:
    want = type(default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not want:
        raise ConfigError(f"{name} must be a {want.__name__}, not {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def parse(text: str, where: str = "config") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: {e}") from None
    flat: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict) and k in _SECTIONS:
            for k2, v2 in v.items():
                flat[_SECTIONS[k] + k2] = (f"[{k}] {k2}", v2)
        else:
            flat[k] = (k, v)
    cfg = Config()
    known = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    for key, (shown, value) in flat.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {shown!r}")
        setattr(cfg, key, _check(f"{where}: {shown}", value, known[key]))
    if cfg.max_concurrent_mounts < 1 or cfg.grpc_workers < 1 or cfg.registry_retries < 1:
        raise ConfigError(f"{where}: max_concurrent_mounts, grpc_workers and [registry] "
                          "retries must be at least 1")
    return cfg


def load(path: str | None) -> Config:
    if not path:
        return Config()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    return parse(text, path)
