"""Reading collectives out of compiled HLO text (CPU and TPU)."""

import math
import re


def all_to_all_group_sizes(hlo: str, min_entries: int = 0) -> list[int]:
    """Devices per group of every all-to-all in ``hlo``: from the mesh form
    ``replica_groups=mesh['axis_0'=2,...], device_ids=(...) {'axis_0'}``, the
    iota form ``[groups,size]<=[...]`` or explicit ``{{0,1},...}``; only those
    whose first operand has at least ``min_entries`` entries per device."""
    sizes = []
    for line in hlo.splitlines():
        if not re.search(r"\sall-to-all(-start)?\(", line):
            continue
        shape = re.search(r"= \(?\w+\[([\d,]*)\]", line).group(1)
        if math.prod(int(d) for d in shape.split(",") if d) < min_entries:
            continue
        mesh = re.search(r"replica_groups=mesh\[([^\]]*)\].*?\}?\s\{([^}]*)\}", line)
        iota = re.search(r"replica_groups=\[[\d,]*?(\d+)\]<=", line)
        listed = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
        if mesh:
            axes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
            # {'axis_0'} is a whole axis, {'axis_0':(2)2} a sub-axis of size 2.
            parts = re.findall(r"'(\w+)'(?::\(\d+\)(\d+))?", mesh.group(2))
            sizes.append(math.prod(int(n or axes[a]) for a, n in parts))
        elif iota:
            sizes.append(int(iota.group(1)))
        elif listed:
            sizes.append(len(listed.group(1).split(",")))
        else:
            raise ValueError(f"unknown replica_groups form: {line.strip()[:300]}")
    return sizes
