"""The planner cases every netinit test tree shares: istio-iptables' own capture-test flag combinations plus
ours, each (flags, env, host facts). Golden rules for each are in tests/unit/netinit/golden/netinit."""

from __future__ import annotations

from lab import netlab
from netinit.core.config import HostFacts

V6 = HostFacts(has_global_ipv4=False, has_global_ipv6=True)
DNS = HostFacts(dns_servers=("127.0.0.53",))
DNS6 = HostFacts(has_global_ipv4=False, has_global_ipv6=True, dns_servers=("127.0.0.53", "::127.0.0.53"))
GROUPS = HostFacts(group_ids={"java": 1500, "ftp": 21})
GROUPS6 = HostFacts(has_global_ipv4=False, has_global_ipv6=True, group_ids={"java": 1500, "ftp": 21})
ISTIO = list(netlab.SIDECAR_ARGS)

# name -> (flags, env, facts)
CASES: dict[str, tuple[list[str], dict[str, str], HostFacts]] = {
    "empty": ([], {}, HostFacts()),
    "istio-sidecar-default": (ISTIO, {}, HostFacts()),
    "ipv6-empty-inbound-ports": (["-b", ""], {}, V6),
    "ip-range": (["-x", "1.1.0.0/16", "-i", "9.9.0.0/16", "--redirect-dns", "-g", "1,2", "-u", "3,4"], {}, DNS),
    "tproxy": (
        [
            "-m",
            "TPROXY",
            "-b",
            "*",
            "-x",
            "1.1.0.0/16",
            "-i",
            "9.9.0.0/16",
            "--redirect-dns",
            "-c",
            "not-istio-nic",
            "--dual-stack",
        ],
        {},
        HostFacts(has_global_ipv6=True, dns_servers=("127.0.0.53",)),
    ),
    "ipv6-inbound-ports": (["-b", "4000,5000"], {}, V6),
    "ipv6-virt-interfaces": (["-b", "4000,5000", "-k", "eth0,eth1"], {}, V6),
    "ipv6-ipnets": (
        ["-b", "4000,5000", "-d", "6000,7000,", "-k", "eth0,eth1", "-x", "2001:db8::/32", "-i", "2001:db8::/32"],
        {},
        V6,
    ),
    "ipv6-uid-gid": (
        [
            "-b",
            "4000,5000",
            "-d",
            "6000,7000",
            "-k",
            "eth0,eth1",
            "-g",
            "1,2",
            "-u",
            "3,4",
            "-x",
            "2001:db8::/32",
            "-i",
            "2001:db8::/32",
        ],
        {},
        V6,
    ),
    "ipv6-outbound-ports": (["-b", "", "-q", "32000,31000"], {}, V6),
    "kube-virt-interfaces": (["-k", "eth1,eth2", "-i", "*"], {}, HostFacts()),
    "ipnets": (["-i", "10.0.0.0/8"], {}, HostFacts()),
    "ipnets-with-kube-virt-interfaces": (["-k", "eth1,eth2", "-i", "10.0.0.0/8"], {}, HostFacts()),
    "inbound-ports-include": (["-b", "32000,31000"], {}, HostFacts()),
    "inbound-ports-wildcard": (["-b", "*"], {}, HostFacts()),
    "inbound-ports-tproxy": (["-b", "32000,31000", "-m", "TPROXY"], {}, HostFacts()),
    "inbound-ports-wildcard-tproxy": (["-b", "*", "-m", "TPROXY"], {}, HostFacts()),
    "inbound-wildcard-exclude": (["-b", "*", "-d", "15090,15021,8000-8010"], {}, HostFacts()),
    "dns-uid-gid": (["--redirect-dns", "-g", "1,2", "-u", "3,4"], {}, DNS6),
    "ipv6-dns-uid-gid": (["--redirect-dns", "--capture-all-dns", "-g", "1,2", "-u", "3,4"], {}, V6),
    "outbound-owner-groups": ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"}, GROUPS),
    "outbound-owner-groups-exclude": ([], {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp"}, GROUPS),
    "ipv6-dns-outbound-owner-groups": (
        ["--redirect-dns", "--capture-all-dns"],
        {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"},
        GROUPS6,
    ),
    "ipv6-dns-outbound-owner-groups-exclude": (
        ["--redirect-dns", "--capture-all-dns"],
        {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp"},
        GROUPS6,
    ),
    "outbound-ports-include": (["-q", "32000,31000"], {}, HostFacts()),
    "outbound-ports-exclude": (["-o", "32000,31000", "-i", "*"], {}, HostFacts()),
    "loopback-outbound-iprange": (["-i", "127.1.2.3/32", "--redirect-dns", "-g", "1,2", "-u", "3,4"], {}, DNS),
    "basic-exclude-nic": (["-c", "not-istio-nic"], {}, HostFacts()),
    "drop-invalid": (["--drop-invalid"], {}, HostFacts()),
    "host-ipv4-loopback-cidr": ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"}, HostFacts()),
    "env-vars": (
        [],
        {
            "ISTIO_INBOUND_PORTS": "*",
            "ISTIO_SERVICE_CIDR": "*",
            "ENVOY_PORT": "16001",
            "ISTIO_META_DNS_CAPTURE": "true",
            "CAPTURE_ALL_DNS": "true",
        },
        HostFacts(),
    ),
}


# The sidecar's own flags plus every optional capture feature (for apply/rollback tests).
FULL = [*ISTIO, "-q", "9000", "-o", "25,26-30", "-c", "eth9", "-k", "veth7", "--drop-invalid", "--redirect-dns",
        "--capture-all-dns"]  # fmt: skip
