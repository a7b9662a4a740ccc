"""NBD and QEMU tooling: our NBD client and writer, the wire protocol and its
errors, qemu-img and qemu-nbd wrappers. May import `sendense.common` only; its
errors carry no HTTP status (the APIs map them)."""
