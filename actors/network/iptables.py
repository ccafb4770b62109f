"""iptables rules for `--iptables` (DNAT of published ports, forwarding, isolation) and
`--ip-masq` (MASQUERADE), through the `iptables` / `iptables-restore` commands.

Everything lives in chains of our own (named so a real dockerd's DOCKER chains never
collide with them), reached by one jump from each built-in chain:

    filter FORWARD     -> PYDOCKER-FORWARD -> PYDOCKER-ISOLATION -> PYDOCKER-ISOLATION-2
    nat PREROUTING     -> PYDOCKER  (local destinations: DNAT of published ports)
    nat OUTPUT         -> PYDOCKER
    nat POSTROUTING    -> PYDOCKER-POSTROUTING  (MASQUERADE)

Rules are added in batches (one `iptables-restore --noflush` per change) and recorded per
owner (a network or a container); removing an owner deletes exactly its recorded rules.
At daemon start our chains are flushed and rebuilt from the network actor's records.
Every function here blocks: the actor runs them in worker threads.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import threading
from pathlib import Path
from typing import NamedTuple

from kernel.errors import StartupError

NAT = "PYDOCKER"
POSTROUTING = "PYDOCKER-POSTROUTING"
FORWARD = "PYDOCKER-FORWARD"
ISOLATION = "PYDOCKER-ISOLATION"
ISOLATION2 = "PYDOCKER-ISOLATION-2"
CHAINS = {"nat": (NAT, POSTROUTING), "filter": (FORWARD, ISOLATION, ISOLATION2)}


class Rule(NamedTuple):
    table: str
    chain: str
    args: tuple[str, ...]
    first: bool = False  # inserted at the top of its chain instead of appended


class IptablesError(OSError):
    pass


def _jumps(userland_proxy: bool) -> list[Rule]:
    """The one jump from each built-in chain into ours."""
    local = ("-m", "addrtype", "--dst-type", "LOCAL", "-j", NAT)
    # Without the userland proxy, connections to 127.0.0.1:<port> are DNATed too.
    output = local if not userland_proxy else ("!", "-d", "127.0.0.0/8", *local)
    return [
        Rule("filter", "FORWARD", ("-j", FORWARD), first=True),
        Rule("nat", "PREROUTING", local),
        Rule("nat", "OUTPUT", output),
        Rule("nat", "POSTROUTING", ("-j", POSTROUTING)),
    ]


class Firewall:
    def __init__(self, *, masquerade: bool, userland_proxy: bool) -> None:
        self.masquerade = masquerade
        self.userland_proxy = userland_proxy
        self._owned: dict[str, list[Rule]] = {}
        self._lock = threading.Lock()
        self._iptables = self._restore = ""

    # -- commands --------------------------------------------------------------------

    def _run(self, *args: str, stdin: str | None = None, check: bool = True) -> bool:
        argv = [self._restore if stdin is not None else self._iptables, "--wait", *args]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if done.returncode != 0 and check:
            what = " ".join(["iptables", "--wait", *args]) if stdin is None else stdin.strip()
            raise IptablesError(
                f"iptables failed: {what}: {done.stderr.strip()} (exit status {done.returncode})"
            )
        return done.returncode == 0

    def _apply(self, action: str, rules: list[Rule]) -> None:
        """One `iptables-restore --noflush` for the whole batch (all or nothing)."""
        lines: list[str] = []
        for table in ("nat", "filter"):
            batch = [r for r in rules if r.table == table]
            if batch:
                lines.append(f"*{table}")
                for rule in batch:
                    verb = action if action == "-D" or not rule.first else "-I"
                    lines.append(" ".join([verb, rule.chain, *(["1"] if verb == "-I" else []),
                                           *rule.args]))  # fmt: skip
                lines.append("COMMIT")
        if lines:
            self._run("--noflush", stdin="\n".join(lines) + "\n")

    # -- the daemon's life -------------------------------------------------------------

    def start(self) -> None:
        """Our chains made (or flushed: stale rules go) and jumped to; fails the daemon's
        start when that fails or the binaries are missing, as dockerd does."""
        failed = (
            "Error initializing network controller: error obtaining controller instance: "
            f'failed to register "bridge" driver: failed to create NAT chain {NAT}: '
        )
        iptables, restore = shutil.which("iptables"), shutil.which("iptables-restore")
        if iptables is None or restore is None:
            raise StartupError(
                failed + "iptables not found (install iptables or run with --iptables=false)"
            )
        self._iptables, self._restore = iptables, restore
        try:
            self._setup()
        except IptablesError as exc:
            raise StartupError(failed + str(exc)) from None

    def _setup(self) -> None:
        with self._lock:
            self._owned.clear()
            lines = []
            for table, chains in CHAINS.items():
                lines.append(f"*{table}")
                lines += [f":{chain} - [0:0]" for chain in chains]  # declaring one flushes it
                if table == "filter":
                    lines.append(f"-A {FORWARD} -j {ISOLATION}")
                lines.append("COMMIT")
            self._run("--noflush", stdin="\n".join(lines) + "\n")
            for userland_proxy in (True, False):  # either variant may be left from a run
                for jump in _jumps(userland_proxy):
                    while self._run("-t", jump.table, "-D", jump.chain, *jump.args, check=False):
                        pass
            self._apply("-A", _jumps(self.userland_proxy))

    # -- rules per owner ---------------------------------------------------------------

    def owns(self, owner: str) -> bool:
        return owner in self._owned

    def add_network(
        self, owner: str, bridge: str, subnet: str, *, internal: bool = False, icc: bool = True,
        masquerade: bool = True,
    ) -> None:  # fmt: skip
        if not self.userland_proxy and not internal:  # 127.0.0.1 may be DNATed to it
            Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").write_text("1")
        self.add(owner, self.network_rules(bridge, subnet, internal, icc, masquerade))

    def add(self, owner: str, rules: list[Rule]) -> None:
        with self._lock:
            if owner in self._owned or not rules:
                return
            self._apply("-A", rules)
            self._owned[owner] = rules

    def remove(self, owner: str) -> None:
        """Delete exactly what was added for `owner`; a rule already gone is no error."""
        with self._lock:
            rules = self._owned.pop(owner, [])
            if not rules:
                return
            try:
                self._apply("-D", rules)
            except IptablesError:  # one is gone already: delete the others one by one
                for rule in rules:
                    self._run("-t", rule.table, "-D", rule.chain, *rule.args, check=False)

    # -- what to add -------------------------------------------------------------------

    def network_rules(
        self, bridge: str, subnet: str, internal: bool = False, icc: bool = True,
        masquerade: bool = True,
    ) -> list[Rule]:  # fmt: skip
        """A bridge network: traffic staying on the bridge (unless `enable_icc=false`) and
        (unless internal) leaving it is accepted, replies come back in, other bridges are
        kept apart, its subnet is masqueraded (`--ip-masq`, `enable_ip_masquerade`)."""
        rules = [
            Rule("filter", ISOLATION, ("-i", bridge, "!", "-o", bridge, "-j", ISOLATION2)),
            Rule("filter", ISOLATION2, ("-o", bridge, "-j", "DROP")),
            Rule("filter", FORWARD if icc else ISOLATION,
                 ("-i", bridge, "-o", bridge, "-j", "ACCEPT" if icc else "DROP")),
        ]  # fmt: skip
        if internal:  # nothing in or out but between its own containers
            rules += [
                Rule("filter", ISOLATION, ("-i", bridge, "!", "-o", bridge, "-j", "DROP")),
                Rule("filter", ISOLATION, ("!", "-i", bridge, "-o", bridge, "-j", "DROP")),
            ]
            return rules
        rules += [
            Rule("filter", FORWARD, ("-i", bridge, "!", "-o", bridge, "-j", "ACCEPT")),
            Rule("filter", FORWARD, ("-o", bridge, "-m", "conntrack", "--ctstate",
                                     "RELATED,ESTABLISHED", "-j", "ACCEPT")),
        ]  # fmt: skip
        if self.userland_proxy:  # from a container, the proxy serves published ports
            rules.append(Rule("nat", NAT, ("-i", bridge, "-j", "RETURN"), first=True))
        else:
            net = str(ipaddress.IPv4Network(subnet, strict=False))
            rules += [  # 127.0.0.1:<port> is DNATed: such packets may leave lo for the bridge
                Rule("nat", POSTROUTING, ("-s", "127.0.0.0/8", "-o", bridge,
                                          "-j", "MASQUERADE")),
                # hairpin: a container reaching a published port of its own bridge through
                # a host address gets the answer back through the host, not directly
                Rule("nat", POSTROUTING, ("-s", net, "-o", bridge, "-m", "conntrack",
                                          "--ctstate", "DNAT", "-j", "MASQUERADE")),
            ]  # fmt: skip
        if self.masquerade and masquerade:
            net = str(ipaddress.IPv4Network(subnet, strict=False))
            rules.append(Rule("nat", POSTROUTING, ("-s", net, "!", "-o", bridge,
                                                   "-j", "MASQUERADE")))  # fmt: skip
        return rules

    def port_rules(
        self, bridge: str, address: str, proto: str, container_port: int, host_ip: str,
        host_port: int,
    ) -> list[Rule]:  # fmt: skip
        """A published port: DNAT to the container, and the forwarded traffic accepted.
        With the userland proxy, containers on the bridge reach it through the proxy."""
        dest = ("-d", f"{host_ip}/32") if host_ip not in ("", "0.0.0.0") else ()
        outside = ("!", "-i", bridge) if self.userland_proxy else ()
        match = ("-p", proto, "-m", proto)
        return [
            Rule("nat", NAT, (*dest, *outside, *match, "--dport", str(host_port),
                              "-j", "DNAT", "--to-destination", f"{address}:{container_port}")),
            Rule("filter", FORWARD, ("-d", f"{address}/32", "!", "-i", bridge, "-o", bridge,
                                     *match, "--dport", str(container_port), "-j", "ACCEPT")),
        ]  # fmt: skip
