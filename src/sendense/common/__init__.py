"""Code shared by hub and node: configuration, errors, logging, the wire contract."""
