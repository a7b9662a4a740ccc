"""vSphere access through pyVmomi: connection, inventory, snapshots, changed areas, readers."""
