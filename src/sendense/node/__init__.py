"""The node appliance (SNA): next to vCenter, reads VM disks into the hub's NBD exports."""
