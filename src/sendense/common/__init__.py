"""Code shared by hub, node and CLI: configuration, errors, logging, the wire
contract, names, checksums, and the one way to run external programs
(`processes`). Imports nothing else of Sendense."""
