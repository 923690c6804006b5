"""The emulation method with real kernel mechanisms: network namespaces, `tc` shaping and CPU cgroups (needs root).

Topology: the namespace `<tag>-hub` holds a bridge `<tag>-br`; each peer runs in its own namespace `<tag>-p<id>`
whose `eth0` (10.77.0.<id+1>/24) is one end of a veth pair, the other end (`<tag>-h<id>`) a port of the bridge.
Nothing is created in, or changed on, the host's own namespace: every interface, address and qdisc lives in a
namespace created here.

Links, shaped on egress of each peer's eth0: a root HTB qdisc with one class per destination peer (rate = ceil = the
link's bandwidth from `cfg.link`), a netem child qdisc adding the link's one-way latency (its queue limit covers
rate x delay generously), and a u32 filter sending packets for the destination's address to its class; other
traffic (ARP, anything else) goes to an unshaped default class. Kernels built without netem (this project's machines)
get a plain FIFO child instead: bandwidth and CPU stay real, and the launcher has each peer's transport add the
one-way latency (`kernel_latency` is False, the peers get `emulation.transport_latency: true`). The same shaping
(`Egress`) runs inside a peer's container too: `shape_here` shapes the container's own device (`dlion emulate shape`).

Compute: a CPU cgroup per peer, `<tag>/p<id>` under the cgroup v1 `cpu` hierarchy (cpu.cfs_quota_us) or, where only
cgroup v2 exists, `cpu.max`. The peer paces its own gradient steps to its cores (`dlion.emulate.pacing`: a quota
alone lets a peer that waits for the network run its steps at full speed); the quota is the ceiling on everything the
peer does, `QUOTA_HEADROOM` x cores per 1 s period. The period is long so that the pacer's one-second bursts of
back-to-back steps are not chopped into cold pieces. The headroom is two bursts: a burst that waited for its turn
(`dlion.emulate.turns`) can end in the period of the next one, and a peer over its quota is frozen, network threads
and all, for the rest of the period. A quota is only a ceiling: when the peers book the whole
machine, they also contend with each other and with the host. So each peer's weight (cpu.shares / cpu.weight) is
proportional to its cores, and the `<tag>` group weighs as much as all the host's CPUs: contention is then shared in
proportion to capacity, and host daemons take little from the emulated micro-clouds. The launcher starts a peer with
`wrap()` and moves it into its cgroup with `attach()`; the peer caps its TensorFlow threads at `PeerSpec.tf_threads`
itself.

The schedule is applied from outside the peers: `apply(elapsed)` changes the tc classes, netem delays and quotas
(latency changes without netem are applied by the peers themselves).
`down()` removes everything carrying the tag, also what an earlier, killed launcher left behind.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from dlion.config import Change, Config
from dlion.emulate import EmulationError


SUBNET = "10.77.0"
PREFIX_LEN = 24
MAX_PEER_ID = 253  # addresses 10.77.0.1 .. 10.77.0.254
IFNAMSIZ = 15
DEFAULT_RATE = "10gbit"  # the unshaped default class
DEFAULT_BURST = "256k"  # room for 64 KB GSO packets at that rate
GSO_MAX_BYTES = 4500  # peers' packets stay a few MTUs long, so HTB paces them finely
QUANTUM = 60000  # bytes; explicit so that high rates do not make tc warn about r2q
CFS_PERIOD_US = 1000000  # the longest the kernel allows (see Compute above)
QUOTA_HEADROOM = 2.0
WEIGHT_PER_CORE = {1: 1024, 2: 100}  # a default-weight task is one core: cpu.shares 1024 (v1), cpu.weight 100 (v2)
WEIGHT_RANGE = {1: (2, 262144), 2: (1, 10000)}
MIN_QUOTA_US = 1000  # the kernel's floor for cfs_quota_us
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
COMMAND_TIMEOUT_S = 30
READY_ENV = "DLION_READY"  # the file a peer creates once it is ready to train ...
CGROUP_ENV = "DLION_CGROUP"  # ... and the CPU cgroup it then waits to be moved into
TRAINED_SUFFIX = ".trained"  # the ready file's name with this suffix: the peer's training is over (`leave_cap`)
ENTER_TIMEOUT_S = 60.0


# ---- running commands -------------------------------------------------------------------------------------------

def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; with `check`, a failure raises EmulationError naming the command."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise EmulationError(f"command not found: {argv[0]} (needed for: {' '.join(argv)})") from None
    except subprocess.TimeoutExpired:
        raise EmulationError(f"command timed out after {COMMAND_TIMEOUT_S}s: {' '.join(argv)}") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise EmulationError(f"command failed (exit {result.returncode}): {' '.join(argv)}: {detail}")
    return result


def _ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`ip` inside namespace `ns` (never the host's)."""
    return _run(["ip", "-n", ns, *args], check=check)


def _tc(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`tc` inside namespace `ns` (never the host's)."""
    return _run(["ip", "netns", "exec", ns, "tc", *args], check=check)


def _tc_here(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`tc` in this process's own namespace (a peer's container)."""
    return _run(["tc", *args], check=check)


def _namespaces() -> list[str]:
    """Names of the named network namespaces (`ip netns list`)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# ---- availability -----------------------------------------------------------------------------------------------

def _cgroup_version() -> int | None:
    """1 for a cgroup v1 `cpu` hierarchy, 2 for a cgroup v2 tree offering `cpu`, None for neither."""
    if (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists():
        return 1
    controllers = CGROUP_V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return 2
    return None


def _cgroup_problem() -> str | None:
    version = _cgroup_version()
    if version is None:
        return f"no CPU cgroup controller (neither {CGROUP_V1_CPU}/cpu.cfs_quota_us nor 'cpu' in " \
               f"{CGROUP_V2}/cgroup.controllers)"
    base = CGROUP_V1_CPU if version == 1 else CGROUP_V2
    if not os.access(base, os.W_OK) or not os.access(base / "cgroup.procs", os.W_OK):
        return f"the CPU cgroup hierarchy at {base} is not writable"
    return None


@functools.lru_cache(maxsize=None)
def kernel_support() -> tuple[str | None, bool]:
    """Try a namespace with HTB, u32 and netem in a throwaway namespace: (why the basics fail or None, whether netem
    works: some kernels are built without it)."""
    probe = f"dlprobe-{uuid.uuid4().hex[:8]}"
    try:
        _run(["ip", "netns", "add", probe])
        _ip(probe, "link", "set", "lo", "up")
        _tc(probe, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1")
        _tc(probe, "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "1mbit")
        _tc(probe, "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", "dst", f"{SUBNET}.1/32", "flowid", "1:1")
    except EmulationError as exc:
        return f"network namespaces with tc htb and u32 do not work here: {exc}", False
    else:
        netem = _tc(probe, "qdisc", "add", "dev", "lo", "parent", "1:1", "netem", "delay", "1ms",
                    check=False).returncode == 0
        return None, netem
    finally:
        _run(["ip", "netns", "delete", probe], check=False)


def available() -> tuple[bool, str]:
    """Whether this machine can run the real method; if not, why."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces, tc and cgroups)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"the `{tool}` command (iproute2) is not installed"
    problem = _cgroup_problem()
    if problem:
        return False, problem
    problem, _ = kernel_support()
    if problem:
        return False, problem
    return True, ""


# ---- tc arguments -----------------------------------------------------------------------------------------------

def _rate(bits_per_s: float) -> str:
    return f"{max(1, round(bits_per_s))}bit"


def _delay(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


def netem_limit(bits_per_s: float, delay_s: float) -> int:
    """netem's queue limit in packets: four times the link's rate x delay in 1500-byte packets, at least 1000."""
    return max(1000, math.ceil(bits_per_s / 8 * delay_s / 1500 * 4))


def _class_minor(dst: int) -> int:
    return dst + 2  # 1:1 is the default class


def _classid(dst: int) -> str:
    return f"1:{_class_minor(dst):x}"


def _leaf_handle(dst: int) -> str:
    return f"{_class_minor(dst) + 0x100:x}:"


_CLASS_RE = re.compile(r"class htb (?P<classid>\S+) .*?rate (?P<rate>\S+) ceil (?P<ceil>\S+).*?\n"
                       r"\s*Sent (?P<bytes>\d+) bytes (?P<packets>\d+) pkt \(dropped (?P<dropped>\d+)")


def _rate_from_tc(text: str) -> float | None:
    """A rate as `tc` prints it ("20Mbit", "1500bit") in bits/s."""
    m = re.fullmatch(r"([\d.]+)([KMGT]?)bit", text)
    return float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m.group(2)] if m else None


# ---- shaping one peer's egress -----------------------------------------------------------------------------------

class Egress:
    """The shaping of peer `src`'s egress device: an HTB root with an unshaped default class and, per other peer, a
    class at the link's rate, a netem child for its latency (a FIFO child without `netem`) and a u32 filter on that
    peer's address (`addresses`: peer id -> IPv4). `tc(*args, check=True)` runs tc where the device lives: in the
    peer's namespace (`RealEmulation`) or in the current one (the peer's container, `shape_here`)."""

    def __init__(self, cfg: Config, src: int, addresses: dict[int, str], tc, netem: bool, dev: str = "eth0"):
        self.cfg = cfg
        self.src = src
        self.addresses = addresses
        self.tc = tc
        self.netem = netem
        self.dev = dev

    def add(self) -> None:
        """Shape every outgoing link as configured for the start of training."""
        self.tc("qdisc", "add", "dev", self.dev, "root", "handle", "1:", "htb", "default", "1")
        self.tc("class", "add", "dev", self.dev, "parent", "1:", "classid", "1:1", "htb",
                "rate", DEFAULT_RATE, "ceil", DEFAULT_RATE, "burst", DEFAULT_BURST, "cburst", DEFAULT_BURST,
                "quantum", str(QUANTUM))
        for dst in self.cfg.peer_ids:
            if dst != self.src:
                self.set_link(dst, at=None, verb="add")
                self.tc("filter", "add", "dev", self.dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                        "match", "ip", "dst", f"{self.addresses[dst]}/32", "flowid", _classid(dst))

    def set_link(self, dst: int, at: float | None, verb: str) -> None:
        """Add (`verb` add) or change (`verb` change) the class and child qdisc of the link to `dst`."""
        link = self.cfg.link(self.src, dst, at=at)
        classid = _classid(dst)
        self.tc("class", verb, "dev", self.dev, "parent", "1:", "classid", classid, "htb",
                "rate", _rate(link.bandwidth), "ceil", _rate(link.bandwidth), "quantum", str(QUANTUM))
        limit = str(netem_limit(link.bandwidth, link.latency))
        child = ["netem", "delay", _delay(link.latency), "limit", limit] if self.netem else ["pfifo", "limit", limit]
        self.tc("qdisc", verb, "dev", self.dev, "parent", classid, "handle", _leaf_handle(dst), *child)

    def classes(self) -> dict:
        """The HTB classes on the device: classid -> {dst (peer id or None), rate_bps, ceil_bps, sent_bytes, ...}."""
        text = self.tc("-s", "class", "show", "dev", self.dev).stdout  # tc has no JSON for HTB classes
        by_class = {_classid(dst): dst for dst in self.cfg.peer_ids}
        classes = {}
        for m in _CLASS_RE.finditer(text):
            classes[m["classid"]] = {"dst": by_class.get(m["classid"]), "rate_bps": _rate_from_tc(m["rate"]),
                                     "ceil_bps": _rate_from_tc(m["ceil"]), "sent_bytes": int(m["bytes"]),
                                     "sent_packets": int(m["packets"]), "dropped": int(m["dropped"])}
        return classes


def shape_here(cfg: Config, peer_id: int, dev: str = "eth0") -> dict:
    """Shape `dev` of this network namespace as peer `peer_id`'s egress, replacing earlier shaping: what a peer's
    container does before the peer starts (needs NET_ADMIN, no netns of our own). Destinations are the configured
    peer addresses; the latency goes to netem unless the peers' transports add it (`emulation.transport_latency`).
    Returns the classes."""
    addresses = {}
    for p in cfg.peers:
        try:
            addresses[p.id] = socket.gethostbyname(p.address)
        except OSError as exc:
            raise EmulationError(f"peer {p.id}: cannot resolve address {p.address!r}: {exc}") from None
    egress = Egress(cfg, peer_id, addresses, _tc_here, netem=not cfg.emulation.transport_latency, dev=dev)
    _tc_here("qdisc", "del", "dev", dev, "root", check=False)  # none yet is fine
    egress.add()
    return egress.classes()


# ---- the emulation ----------------------------------------------------------------------------------------------

def default_tag(cfg: Config) -> str:
    """`dl` + a short hash of the peers' ids and ports: each config's emulation is its own, so setting one up (which
    first removes its own leftovers) never touches another run's, and `dlion emulate down FILE` finds what a killed
    launcher left. Two runs with the same ports cannot run at once anyway."""
    identity = ",".join(f"{p.id}:{p.port}" for p in sorted(cfg.peers, key=lambda p: p.id))
    return "dl" + hashlib.sha1(identity.encode()).hexdigest()[:4]


class RealEmulation:
    """Namespaces, shaped veths and CPU cgroups for every peer of `cfg`; every name starts with `tag` (by default
    `default_tag(cfg)`)."""

    def __init__(self, cfg: Config, tag: str | None = None):
        tag = default_tag(cfg) if tag is None else tag
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", tag):
            raise EmulationError(f"emulation tag {tag!r}: expected letters and digits, starting with a letter")
        for pid in cfg.peer_ids:
            if pid > MAX_PEER_ID:
                raise EmulationError(f"peer id {pid}: the real method addresses peers as {SUBNET}.<id+1>, so ids "
                                     f"must be at most {MAX_PEER_ID}")
        longest = f"{tag}-h{max(cfg.peer_ids)}"
        if len(longest) > IFNAMSIZ:
            raise EmulationError(f"emulation tag {tag!r} is too long: interface name {longest!r} exceeds "
                                 f"{IFNAMSIZ} characters")
        self.cfg = cfg
        self.tag = tag
        self.hub = f"{tag}-hub"
        self.bridge = f"{tag}-br"
        self._applied: set[int] = set()  # indices into cfg.schedule
        self._netem = True  # whether links get a netem child qdisc (else a plain FIFO); decided in up()

    # names and addresses
    def namespace(self, peer_id: int) -> str:
        return f"{self.tag}-p{peer_id}"

    @staticmethod
    def address(peer_id: int) -> str:
        return f"{SUBNET}.{peer_id + 1}"

    def _hub_port(self, peer_id: int) -> str:
        return f"{self.tag}-h{peer_id}"

    def _our_namespaces(self) -> list[str]:
        pattern = re.compile(rf"{re.escape(self.tag)}-(hub|p\d+)")
        return [ns for ns in _namespaces() if pattern.fullmatch(ns)]

    @property
    def kernel_latency(self) -> bool:
        """Whether link latency is emulated by the kernel (netem); if not, each peer's transport must add it."""
        return self._netem

    # lifecycle
    def up(self) -> dict[int, str]:
        """Create the namespaces, links, shaping and cgroups (removing leftovers first); peer id -> its address."""
        self.down()
        self._applied = set()
        problem, self._netem = kernel_support()
        if problem:
            raise EmulationError(problem)
        try:
            self._create_hub()
            for pid in self.cfg.peer_ids:
                self._create_peer(pid)
            for pid in self.cfg.peer_ids:
                self._egress(pid).add()
            self._create_cgroups()
        except BaseException:
            self.down()
            raise
        return {pid: self.address(pid) for pid in self.cfg.peer_ids}

    def wrap(self, peer_id: int, argv: list[str]) -> list[str]:
        """The command line running `argv` inside the peer's namespace."""
        return ["ip", "netns", "exec", self.namespace(peer_id), *argv]

    def attach(self, peer_id: int, pid: int) -> None:
        """Move process `pid` (all its threads) into the peer's CPU cgroup."""
        _join(self._cgroup_dir(peer_id), pid)

    def release(self, pid: int) -> None:
        """Move process `pid` out of its peer's CPU cgroup, to the hierarchy's root: no cap."""
        _join(self._cgroup_base()[1], pid)

    def peer_env(self, peer_id: int, ready_file: Path) -> dict[str, str]:
        """What a peer process is told in its environment: the file to create once it is ready to train, and the CPU
        cgroup it then waits to be moved into (`enter_cgroup`), so that importing TensorFlow and building the model
        run before its CPU cap binds."""
        return {READY_ENV: str(ready_file), CGROUP_ENV: f"/{self.tag}/p{peer_id}"}

    def apply(self, at: float) -> list[Change]:
        """Apply the scheduled changes due by `at` seconds that are not applied yet; returns them in time order."""
        due = sorted((i for i, c in enumerate(self.cfg.schedule) if c.at <= at and i not in self._applied),
                     key=lambda i: self.cfg.schedule[i].at)
        applied = []
        for i in due:
            change = self.cfg.schedule[i]
            if change.is_link:
                self._egress(change.src).set_link(change.dst, at=change.at, verb="change")
            else:
                self._set_quota(change.peer, change.cores)
            self._applied.add(i)
            applied.append(change)
        return applied

    def status(self) -> dict:
        """What exists now: our namespaces, per peer its tc classes (rate, sent bytes) and qdiscs, its CPU quota."""
        namespaces = self._our_namespaces()
        peers = {}
        for pid in self.cfg.peer_ids:
            ns = self.namespace(pid)
            peers[pid] = {"namespace": ns if ns in namespaces else None, "address": self.address(pid),
                          "classes": self._egress(pid).classes() if ns in namespaces else {},
                          "qdiscs": self._qdiscs(ns) if ns in namespaces else [],
                          "cgroup": self._cgroup_status(pid)}
        return {"tag": self.tag, "namespaces": namespaces, "peers": peers}

    def down(self) -> None:
        """Remove everything with our tag: processes left in our namespaces (killed), the namespaces (hence the
        veths, bridge and qdiscs), and the cgroups (their processes moved to the hierarchy's root first).
        Safe when nothing exists."""
        for ns in self._our_namespaces():
            self._kill_processes_in(ns)
            _run(["ip", "netns", "delete", ns])
        self._remove_cgroups()

    # network
    def _create_hub(self) -> None:
        _run(["ip", "netns", "add", self.hub])
        _ip(self.hub, "link", "set", "lo", "up")
        _ip(self.hub, "link", "add", self.bridge, "type", "bridge")
        _ip(self.hub, "link", "set", self.bridge, "up")

    def _create_peer(self, pid: int) -> None:
        ns, port = self.namespace(pid), self._hub_port(pid)
        _run(["ip", "netns", "add", ns])
        _ip(ns, "link", "set", "lo", "up")
        _ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.hub)
        _ip(ns, "addr", "add", f"{self.address(pid)}/{PREFIX_LEN}", "dev", "eth0")
        # HTB lets a whole packet through on any positive token balance, and TCP on a veth builds 64 KB GSO packets:
        # a message of a few such packets would pass at line rate and the link would look far faster than it is
        _ip(ns, "link", "set", "eth0", "gso_max_size", str(GSO_MAX_BYTES))
        _ip(ns, "link", "set", "eth0", "up")
        _ip(self.hub, "link", "set", port, "master", self.bridge)
        _ip(self.hub, "link", "set", port, "up")

    def _egress(self, src: int) -> Egress:
        return Egress(self.cfg, src, {pid: self.address(pid) for pid in self.cfg.peer_ids},
                      functools.partial(_tc, self.namespace(src)), self._netem)

    def _qdiscs(self, ns: str) -> list[dict]:
        raw = json.loads(_tc(ns, "-s", "-j", "qdisc", "show", "dev", "eth0").stdout or "[]")
        return [{"kind": q.get("kind"), "handle": q.get("handle"), "parent": q.get("parent"),
                 "delay_s": (q.get("options") or {}).get("delay", {}).get("delay"),
                 "limit": (q.get("options") or {}).get("limit"), "sent_bytes": q.get("bytes")} for q in raw]

    @staticmethod
    def _kill_processes_in(ns: str) -> None:
        """SIGKILL what still runs in one of our namespaces (peers of a launcher that died), so it goes away."""
        out = _run(["ip", "netns", "pids", ns], check=False).stdout
        for pid in (int(p) for p in out.split() if p.isdigit()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # CPU
    @staticmethod
    def _cgroup_base() -> tuple[int, Path]:
        version = _cgroup_version()
        if version is None:
            raise EmulationError(_cgroup_problem())
        return version, (CGROUP_V1_CPU if version == 1 else CGROUP_V2)

    def _cgroup_root(self) -> Path:
        return self._cgroup_base()[1] / self.tag

    def _cgroup_dir(self, peer_id: int) -> Path:
        return self._cgroup_root() / f"p{peer_id}"

    def _create_cgroups(self) -> None:
        version, base = self._cgroup_base()
        root = base / self.tag
        if version == 2:
            _enable_cpu_controller(base)
        root.mkdir(exist_ok=True)
        _set_weight(version, root, os.cpu_count() or 1)
        if version == 2:
            _enable_cpu_controller(root)
        for pid in self.cfg.peer_ids:
            self._cgroup_dir(pid).mkdir(exist_ok=True)
            self._set_quota(pid, self.cfg.cores(pid))

    def _set_quota(self, peer_id: int, cores: float) -> None:
        version, _ = self._cgroup_base()
        quota = max(MIN_QUOTA_US, round(cores * QUOTA_HEADROOM * CFS_PERIOD_US))
        directory = self._cgroup_dir(peer_id)
        if version == 1:
            _write(directory / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(directory / "cpu.cfs_quota_us", str(quota))
        else:
            _write(directory / "cpu.max", f"{quota} {CFS_PERIOD_US}")
        _set_weight(version, directory, cores)

    def _cgroup_status(self, peer_id: int) -> dict | None:
        """{"path", "quota_us", "period_us", "weight", "procs"} of the peer's cgroup, or None if it does not exist."""
        try:
            version, _ = self._cgroup_base()
        except EmulationError:
            return None
        directory = self._cgroup_dir(peer_id)
        if not directory.is_dir():
            return None
        if version == 1:
            quota = int((directory / "cpu.cfs_quota_us").read_text())
            period = int((directory / "cpu.cfs_period_us").read_text())
            weight = int((directory / "cpu.shares").read_text())
        else:
            q, p = (directory / "cpu.max").read_text().split()
            quota, period = (-1 if q == "max" else int(q)), int(p)
            weight = int((directory / "cpu.weight").read_text())
        procs = [int(x) for x in (directory / "cgroup.procs").read_text().split()]
        return {"path": str(directory), "quota_us": quota, "period_us": period, "weight": weight, "procs": procs}

    def _remove_cgroups(self) -> None:
        """Move every process of our cgroup tree to the hierarchy's root, then remove the tree bottom-up."""
        try:
            _, base = self._cgroup_base()
        except EmulationError:
            return
        root = base / self.tag
        if not root.is_dir():
            return
        for directory in sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)) + [root]:
            for _ in range(3):  # processes may fork while being moved
                procs = (directory / "cgroup.procs").read_text().split()
                if not procs:
                    break
                for pid in procs:
                    try:
                        (base / "cgroup.procs").write_text(f"{pid}\n")
                    except ProcessLookupError:
                        pass
                    except OSError as exc:
                        raise EmulationError(f"cannot move process {pid} out of {directory} into "
                                             f"{base}: {exc.strerror}") from None
            try:
                directory.rmdir()
            except OSError as exc:
                raise EmulationError(f"cannot remove cgroup {directory}: {exc.strerror}") from None


def enter_cgroup(timeout_s: float = ENTER_TIMEOUT_S) -> None:
    """Say this peer is ready (the file the launcher named in its environment, `RealEmulation.peer_env`) and wait
    until the launcher has moved it into its CPU cgroup. Inside its network namespace a peer cannot do it itself:
    `ip netns exec` mounts a /sys of its own, without the cgroup hierarchy. Nothing to do without the environment (not
    under the real method, or in a container, whose limits the engine sets)."""
    ready, group = os.environ.get(READY_ENV), os.environ.get(CGROUP_ENV)
    if not ready or not group:
        return
    Path(ready).touch()
    deadline = time.monotonic() + timeout_s
    while not _in_cgroup(group):
        if time.monotonic() > deadline:
            raise EmulationError(f"not moved into CPU cgroup {group} within {timeout_s:.0f} s of saying so in {ready}")
        time.sleep(0.02)


def leave_cap() -> None:
    """Say this peer's training is over (a file next to its ready file): the launcher then moves it out of its CPU
    cgroup, so that its final evaluation and saving, which are no part of the emulated training, run at the machine's
    speed. Does not wait. Nothing to do where `enter_cgroup` had nothing to do."""
    ready, group = os.environ.get(READY_ENV), os.environ.get(CGROUP_ENV)
    if ready and group:
        Path(ready).with_suffix(TRAINED_SUFFIX).touch()


def _in_cgroup(group: str) -> bool:
    """Whether /proc/self/cgroup shows this process in `group` of the CPU controller (v1) or the unified tree (v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if path == group and (controllers == "" or "cpu" in controllers.split(",")):
            return True
    return False


def _join(directory: Path, pid: int) -> None:
    path = directory / "cgroup.procs"
    try:
        path.write_text(f"{pid}\n")
    except OSError as exc:
        raise EmulationError(f"cannot move process {pid} into {path}: {exc.strerror}") from None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value + "\n")
    except OSError as exc:
        raise EmulationError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _set_weight(version: int, directory: Path, cores: float) -> None:
    """The group's CPU weight under contention: that of `cores` default tasks."""
    low, high = WEIGHT_RANGE[version]
    weight = min(high, max(low, round(cores * WEIGHT_PER_CORE[version])))
    _write(directory / ("cpu.shares" if version == 1 else "cpu.weight"), str(weight))


def _enable_cpu_controller(directory: Path) -> None:
    """cgroup v2: let the children of `directory` use the cpu controller."""
    control = directory / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        _write(control, "+cpu")
