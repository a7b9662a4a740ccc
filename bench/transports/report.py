"""The report: per variant the medians of the runs (MB/s, the ratio to direct, CPU
seconds per GiB of each side), the table printed, and the tools' versions."""

from __future__ import annotations

import statistics
import subprocess
from typing import Any

from transports.runs import Variant


def summarize(vs: list[Variant], data_bytes: int) -> dict[str, Any]:
    gib = data_bytes / (1 << 30)
    out: dict[str, Any] = {}
    direct_runs = next(v for v in vs if v.name == "direct").data.get("seconds")
    direct = statistics.median(direct_runs) if direct_runs else float("nan")

    def med(v: Variant, key: str) -> float:
        return statistics.median(v.data[key]) / gib

    plain = {v.connections: v for v in vs if v.transport == "direct" and v.data.get("seconds")}
    for v in vs:
        if not v.data.get("seconds"):
            out[v.name] = {"error": v.note}
            continue
        median_s = statistics.median(v.data["seconds"])
        out[v.name] = {
            "transport": v.transport,
            "cipher": v.data["cipher"][-1] if v.data.get("cipher") else v.cipher,
            "connections": v.connections,
            "seconds": [round(s, 2) for s in v.data["seconds"]],
            "data_MBps": round(data_bytes / median_s / 1e6),
            "ratio_vs_direct": round(direct / median_s, 2),
            "tunnel_cpu_s_per_GiB": round(med(v, "tunnel_cpu"), 2),
            "tunnel_node_cpu_s_per_GiB": round(med(v, "tunnel_node_cpu"), 2),
            "tunnel_hub_cpu_s_per_GiB": round(med(v, "tunnel_hub_cpu"), 2),
            "qemu_nbd_cpu_s_per_GiB": round(statistics.median(v.data["qemu_nbd_cpu"]) / gib, 2),
            "nbdcopy_cpu_s_per_GiB": round(statistics.median(v.data["nbdcopy_cpu"]) / gib, 2),
            "other_cpu_s_per_GiB": round(statistics.median(v.data["other_cpu"]) / gib, 2),
        }
        base = plain.get(v.connections)
        if v.tls_qemu and base is not None:
            # TLS inside nbdcopy (node) and qemu-nbd (hub): its cost is the extra CPU
            # of those two over the plain run with as many connections.
            node = med(v, "nbdcopy_cpu") - med(base, "nbdcopy_cpu")
            hub = med(v, "qemu_nbd_cpu") - med(base, "qemu_nbd_cpu")
            out[v.name].update(
                tunnel_cpu_s_per_GiB=round(node + hub, 2),
                tunnel_node_cpu_s_per_GiB=round(node, 2),
                tunnel_hub_cpu_s_per_GiB=round(hub, 2),
                tunnel_cpu_is="extra nbdcopy + qemu-nbd CPU over the plain run",
            )
        if v.note:
            out[v.name]["note"] = v.note
    return out


def print_table(table: dict[str, Any]) -> None:
    head = (
        f"{'variant':24} {'cipher':30} {'conn':>4} {'MB/s':>5} {'ratio':>5} "
        f"{'tun s/GiB':>9} {'node':>5} {'hub':>5} {'qemu':>5} {'copy':>5} "
        f"{'other':>5}"
    )
    print(head)
    for name, e in table.items():
        if "error" in e:
            print(f"{name:24} ERROR {e['error']}")
            continue
        print(
            f"{name:24} {e['cipher'][:30]:30} {e['connections']:>4} {e['data_MBps']:>5} "
            f"{e['ratio_vs_direct']:>5.2f} {e['tunnel_cpu_s_per_GiB']:>9.2f} "
            f"{e['tunnel_node_cpu_s_per_GiB']:>5.2f} {e['tunnel_hub_cpu_s_per_GiB']:>5.2f} "
            f"{e['qemu_nbd_cpu_s_per_GiB']:>5.2f} {e['nbdcopy_cpu_s_per_GiB']:>5.2f} "
            f"{e['other_cpu_s_per_GiB']:>5.2f}"
        )
    print("CPU columns: seconds per GiB of data; node/hub = the tunnel's two ends")


def version(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    out = (r.stdout or r.stderr).strip()
    return out.splitlines()[0] if out else "unknown"
