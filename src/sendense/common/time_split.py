"""What a backup is doing (its phase) and where its copy's time went (the split).

The split is seen from the node, the only side that sees both ends of the copy:

* `source_s`: seconds the copy waited on the source, reading from the datastore.
* `target_s`: seconds it waited on the target, the NBD round trip: the tunnel and
  the hub's write together. The node cannot tell the two apart (the hub's
  qemu-nbd is behind the tunnel), so neither does this figure.

With several readers and pipelined writes, both are wall-clock-equivalent
seconds: each reader's waits, divided by the readers (`node/pace.py`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# What a disk's copy, or the whole task, is doing: snapshot (the task only: the
# VM snapshot is taken, there are no disks yet) -> planning (areas from CBT, the
# space check) -> copying -> flushing (the last acknowledgements, NBD flush; disks
# only) -> finishing (the data is on the hub: the snapshot is removed, the hub
# checks and records). A task that ended keeps the last phase it reached.
Phase = Literal["snapshot", "planning", "copying", "flushing", "finishing"]
Bottleneck = Literal["source", "target", "balanced"]

# One side is the bottleneck when it held the copy up this many times longer than
# the other; closer than that, neither is.
DOMINANCE = 1.5


def judge(source_s: float, target_s: float) -> Bottleneck | None:
    """The side that held the copy up; None when nothing was waited on."""
    if source_s <= 0 and target_s <= 0:
        return None
    if source_s >= DOMINANCE * target_s:
        return "source"
    if target_s >= DOMINANCE * source_s:
        return "target"
    return "balanced"


class TimeSplit(BaseModel):
    source_s: float = Field(default=0.0, description="seconds waiting on reads from the source")
    target_s: float = Field(
        default=0.0,
        description="seconds waiting on the NBD writes' acknowledgements: the tunnel and "
        "the hub's write together, which the node cannot tell apart",
    )
    bottleneck: Bottleneck | None = Field(
        default=None,
        description=f"the side that waited at least {DOMINANCE} times longer; "
        "balanced when neither; none before anything was waited on",
    )


class JobTimeSplit(TimeSplit):
    """A finished backup's split: its disks' seconds added up (disks copy in
    parallel, so these are disk-seconds), and each disk's own."""

    disks: dict[int, TimeSplit] = Field(default_factory=dict)

    @classmethod
    def of(cls, disks: dict[int, TimeSplit]) -> JobTimeSplit:
        source = sum(d.source_s for d in disks.values())
        target = sum(d.target_s for d in disks.values())
        return cls(source_s=source, target_s=target, bottleneck=judge(source, target), disks=disks)
