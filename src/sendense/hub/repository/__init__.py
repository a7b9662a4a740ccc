"""Where backups live and how they are served: repositories (capacity, the
mount marker, images, usage over time), the NBD port pool, NBD exports (one qemu-nbd per image
being written or read, recorded in the database so a crash leaves no orphan),
and the hub's private read-only image reader on a Unix socket. "Export" means
one thing here: an image served by qemu-nbd under an export name. May import
`sendense.common`, `sendense.nbd` and `hub.db`."""
