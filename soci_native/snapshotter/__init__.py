"""``soci-native snapshotter``: a containerd remote snapshotter (proxy plugin) that mounts
SOCI-indexed layers lazily.

* :mod:`~soci_native.snapshotter.service`: the Snapshots RPCs over snapshot directories;
* :mod:`~soci_native.snapshotter.metadata`: the snapshot state (SQLite);
* :mod:`~soci_native.snapshotter.filters`: containerd's List filter syntax;
* :mod:`~soci_native.snapshotter.remote`: target-layer labels, index discovery, the plan;
* :mod:`~soci_native.snapshotter.mountd`: the mount daemon that owns the FUSE mounts;
* :mod:`~soci_native.snapshotter.server`: the gRPC server, adoption at start;
* :mod:`~soci_native.snapshotter.config`: the TOML config;
* :mod:`~soci_native.snapshotter.command`: the click commands.

Nothing here imports grpc or libfuse until a command runs.
"""
