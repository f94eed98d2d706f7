"""containerd's Snapshots API (``containerd.services.snapshots.v1``) messages, generated from
the .proto files beside this module by ``make protos``."""
