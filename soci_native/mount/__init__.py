"""``soci-native mount``: a read-only FUSE view of a SOCI-indexed image whose file bytes load
lazily through the zTOCs.

* :mod:`~soci_native.mount.tree`: the merged file tree, from tar entries alone (overlay
  semantics: whiteouts, opaque directories, hard links, implicit parents);
* :mod:`~soci_native.mount.spans`: blob readers, the span fetcher/verifier, the on-disk span
  cache, and layers served from a local copy;
* :mod:`~soci_native.mount.image`: finding the index in the local store and setting it all up;
* :mod:`~soci_native.mount.fs`: the FUSE frontend (``soci_native._fuse``, C over libfuse 3's
  low-level API) and the reads it hands back to Python; :mod:`~soci_native.mount.inodes`: the
  tree as the flat inode table it serves;
* :mod:`~soci_native.mount.command`: the ``mount`` and ``umount`` click commands.

Only ``fs`` loads libfuse, and only when a mount starts.
"""

from soci_native.mount.command import mount_command, umount_command

__all__ = ["mount_command", "umount_command"]
