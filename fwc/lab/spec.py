"""A JSON description of a LabCluster, for running the lab without the policy model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fwc.lab.topology import (
    LabCluster,
    LabExpectation,
    LabLink,
    LabMember,
    LabObject,
    LabSegment,
    LabSnat,
)


def cluster_from_dict(data: dict[str, Any]) -> LabCluster:
    return LabCluster(
        name=data["name"],
        members=tuple(
            LabMember(
                m["name"],
                int(m.get("priority", 100)),
                {k: LabLink(v["device"], tuple(v["addresses"])) for k, v in m["links"].items()},
            )
            for m in data["members"]
        ),
        segments=tuple(
            LabSegment(s["name"], tuple(s.get("vips", ())), s.get("vrid")) for s in data["segments"]
        ),
        sync=data.get("sync"),
        objects=tuple(LabObject(o["name"], tuple(o["items"])) for o in data.get("objects", ())),
        expectations=tuple(
            LabExpectation(
                e["verdict"],
                e["src"],
                e["dst"],
                e.get("service", ""),
                e["proto"],
                e.get("port"),
                e.get("text", ""),
                e.get("family"),
                e.get("in"),
            )
            for e in data.get("expectations", ())
        ),
        snat=tuple(LabSnat(s["from"], s["out"], s["to"]) for s in data.get("snat", ())),
        advert=float(data.get("advert", 1.0)),
        preempt=bool(data.get("preempt", True)),
    )


def load_spec(path: Path) -> LabCluster:
    return cluster_from_dict(json.loads(path.read_text()))
