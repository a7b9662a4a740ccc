"""The parts of bench/tunnel_transports.py: the loopback addresses and sockets,
the processes and the CPU they use, the keys and certificates, each transport's
side (OpenSSH, asyncssh, a TLS proxy), the variants and one run of each, and the
report. The benchmark's script starts every role process through itself."""
