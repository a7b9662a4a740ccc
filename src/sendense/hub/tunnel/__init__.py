"""The hub's end of the tunnel: a private sshd the hub generates and supervises."""
