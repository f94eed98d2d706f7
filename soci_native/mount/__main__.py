"""``python -m soci_native.mount IMAGE MOUNTPOINT [options]``: the mount command on its own
(the background process `soci-native mount` starts runs this)."""

from soci_native.mount.command import mount_command

if __name__ == "__main__":
    mount_command.main(prog_name="soci-native mount")
