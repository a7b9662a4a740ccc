"""Test rig: real servers (PostgreSQL, qemu-nbd, the hub) started and stopped by PID."""
