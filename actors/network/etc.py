"""/etc/hosts and /etc/resolv.conf for a container, as dockerd writes them."""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DNS = "127.0.0.11"
FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")


def hosts_file(
    hostname: str,
    domainname: str,
    addresses: list[str],
    extra_hosts: list[str],
    links: list[tuple[str, list[str]]],
) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    for entry in extra_hosts:
        name, _, ip = entry.partition(":")  # the CLI sends host:ip (ip may hold colons)
        lines.append(f"{ip}\t{name}")
    for address, names in links:
        lines.append(f"{address}\t{' '.join(names)}")
    own = f"{hostname}.{domainname} {hostname}" if domainname else hostname
    for address in addresses:
        lines.append(f"{address}\t{own}")
    return "\n".join(lines) + "\n"


def host_resolv() -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search domains, options) of the host's resolv.conf."""
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            servers.append(fields[1])
        elif fields[0] in ("search", "domain"):
            search = fields[1:]
        elif fields[0] == "options":
            options += fields[1:]
    return servers, search, options


def resolv_conf(*, embedded: bool, dns: list[str], search: list[str], options: list[str]) -> str:
    """User-defined networks: the embedded server (which forwards to the host's or --dns
    servers); the default bridge: the host's servers without loopback ones, or --dns."""
    host_servers, host_search, host_options = host_resolv()
    lines: list[str] = []
    if embedded:
        lines.append(f"nameserver {EMBEDDED_DNS}")
    else:
        servers = dns or [s for s in host_servers if not s.startswith(("127.", "::1"))]
        lines += [f"nameserver {s}" for s in servers or FALLBACK_DNS]
    if search or host_search:
        lines.append("search " + " ".join(search or host_search))
    if options or host_options:
        lines.append("options " + " ".join(options or host_options))
    if embedded:
        servers = dns or host_servers or list(FALLBACK_DNS)
        lines += ["", "# Based on host file: '/etc/resolv.conf' (internal resolver)",
                  f"# ExtServers: [{' '.join('host(' + s + ')' for s in servers)}]"]  # fmt: skip
    return "\n".join(lines) + "\n"


def forward_servers(dns: list[str]) -> list[str]:
    return dns or host_resolv()[0] or list(FALLBACK_DNS)


def host_files(extra_hosts: list[str]) -> tuple[str, str]:
    """`--network host`: the host's own /etc/hosts (plus --add-host) and resolv.conf."""
    try:
        hosts = Path("/etc/hosts").read_text()
    except OSError:
        hosts = "127.0.0.1\tlocalhost\n"
    if hosts and not hosts.endswith("\n"):
        hosts += "\n"
    for entry in extra_hosts:
        name, _, ip = entry.partition(":")
        hosts += f"{ip}\t{name}\n"
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = "".join(f"nameserver {s}\n" for s in FALLBACK_DNS)
    return hosts, resolv


def link_env(alias: str, parent: str, address: str, ports: list[str], env: list[str]) -> list[str]:
    """Legacy `--link` variables (moby's links package): <ALIAS>_NAME, _PORT*, _ENV_*."""
    prefix = alias.upper().replace("-", "_")
    out = [f"{prefix}_NAME=/{parent.lstrip('/')}/{alias}"]

    def key(port: str) -> tuple[int, str]:
        number, _, proto = port.partition("/")
        return (int(number) if number.isdigit() else 0, proto or "tcp")

    for index, (number, proto) in enumerate(sorted(key(p) for p in ports)):
        url = f"{proto}://{address}:{number}"
        if index == 0:
            out.append(f"{prefix}_PORT={url}")
        base = f"{prefix}_PORT_{number}_{proto.upper()}"
        out += [f"{base}={url}", f"{base}_ADDR={address}", f"{base}_PORT={number}",
                f"{base}_PROTO={proto}"]  # fmt: skip
    for entry in env:
        name, sep, value = entry.partition("=")
        if sep and name not in ("HOME", "PATH"):
            out.append(f"{prefix}_ENV_{name}={value}")
    return out
