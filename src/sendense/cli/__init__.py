"""The `sendense` command line: thin commands over the hub API and services."""
