"""The hub's side of its nodes: enrollment and revocation (registry), the client
that calls a node's API through its tunnel, the vCenters each node reaches, and
the hub-managed sshd the tunnels end in. May import `sendense.common`,
`sendense.nbd`, `hub.db` and `hub.auth`."""
