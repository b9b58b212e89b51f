"""Target uplinks: the member's uplink monitor (fwc-uplinks.sh) and its systemd unit.

Why a generated monitor (docs/language.md, "Uplink failover"): keepalived tracks
health only to move VRRP priorities (the VIPs would move to the peer, the
opposite of a per-member uplink switch) and has no per-route tracking; the
kernel's nexthop groups and dead-gateway handling react to link and neighbour
state only, and a router whose upstream died still answers ARP. A small shell
loop with `ping` and `ip route replace/del` is what an admin would write, is
read in a minute, and is tested on a real kernel by the lab's uplink drill.
"""

from __future__ import annotations

import math

from fwc import protocols as proto
from fwc.backend.files import GeneratedFile, path_of, unit_name
from fwc.backend.render.context import MemberBuild
from fwc.backend.render.routes import route_script_context, route_words
from fwc.backend.render.templates import render_template
from fwc.model import Cluster, Member
from fwc.model.records import dataclass
from fwc.model.uplinks import Uplink, uplinks


@dataclass(frozen=True, slots=True)
class Watched:
    """One `monitor` line of the script."""

    name: str
    comment: str
    family: int
    target: str
    device: str  # the uplink's device: the probe leaves by it or not at all (`ping -I`)
    interval: str  # seconds, as sleep and ping -W read them
    guard: int  # whole seconds after which `timeout` kills a ping
    fall: int
    rise: int
    pin: tuple[str, ...]
    show: tuple[str, ...]
    route: tuple[str, ...]


def _seconds(ms: int) -> str:
    return f"{ms // 1000}" if ms % 1000 == 0 else f"{ms / 1000:g}"


def watched(cluster: Cluster, member: Member, uplink: Uplink) -> Watched | None:
    route, probe = uplink.route, uplink.route.probe
    words = route_words(cluster, member, route)
    device = member.device(uplink.interface)
    if words is None or probe is None or device is None:
        return None
    pin: tuple[str, ...] = ()
    if uplink.pin is not None:
        pin = (str(probe.target), "via", str(uplink.pin), "dev", device)
    show = ["table", str(route.table) if route.table is not None else "main",
            "exact", str(route.destination)]
    if route.gateway is not None:
        show += ["via", str(route.gateway)]
    show += ["dev", device]
    label = f"{uplink.interface} via {route.gateway}" if route.gateway is not None \
        else uplink.interface
    return Watched(
        label, route.text(), route.family,
        str(probe.target), device, _seconds(probe.interval_ms),
        math.ceil(probe.interval_ms / 1000) + 1, probe.fall, probe.rise, pin, tuple(show),
        tuple(words))


def monitored(cluster: Cluster, member: Member) -> list[Watched]:
    out = []
    for uplink in uplinks(cluster, member):
        got = watched(cluster, member, uplink)
        if got is not None:
            out.append(got)
    return out


def member_monitored(build: MemberBuild) -> list[Watched]:
    """`monitored` of BUILD's member, once per member build: whether the member gets the
    monitor (asked once per file row) and the script share it."""
    key = "uplinks monitored"
    if key not in build.memo:
        build.memo[key] = monitored(build.cluster, build.member)
    return build.memo[key]  # type: ignore[return-value]


def has_uplinks(build: MemberBuild) -> bool:
    """When the member gets the monitor and its unit (the files table's When.UPLINKS)."""
    return bool(member_monitored(build))


def monitor_script(cluster: Cluster, member: Member, watched_routes: list[Watched]) -> str:
    return render_template("fwc-uplinks.sh.j2", {
        **route_script_context(cluster, member, "fwc-uplinks.service", proto.UPLINKS_LOG_TAG),
        "uplinks": watched_routes,
    })


def monitor_unit(cluster: Cluster, member: Member) -> str:
    return render_template("fwc-uplinks.service.j2", {
        "cluster": cluster.name,
        "member": member.name,
        "path": path_of("fwc-uplinks.service"),
        "script": path_of("fwc-uplinks.sh"),
        "routes_unit": unit_name("fwc-routes.service"),
    })


def render_file(build: MemberBuild, file: GeneratedFile) -> str:
    if file.name == "fwc-uplinks.service":
        return monitor_unit(build.cluster, build.member)
    return monitor_script(build.cluster, build.member, member_monitored(build))
