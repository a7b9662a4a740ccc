"""Getting data back out: instant access (a point's disks over NBD, throwaway
overlays), a disk as a raw stream or converted to QCOW2/VMDK for a download,
and a whole VM rebuilt in vCenter through the node (to_vcenter). May import
`sendense.common`, `sendense.nbd`, `hub.db`, `hub.repository`, `hub.nodes` and
`hub.tasks`."""
