"""The node appliance (SNA): next to vCenter, reads VM disks into the hub's NBD
exports and writes restores back. May import `sendense.common` and
`sendense.nbd`; never the hub."""
