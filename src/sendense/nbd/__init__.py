"""NBD and QEMU tooling: qemu-img and qemu-nbd wrappers, process helpers."""
