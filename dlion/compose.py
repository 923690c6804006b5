"""`dlion compose FILE`: a docker-compose file that runs every peer of a config in its own container.

One service per peer, all from the image `dlion-peer` (peers/Dockerfile), each running the same `dlion peer` that
`dlion run` starts (peers/entrypoint.sh). The compose file holds only what belongs to the deployment; the config itself
is mounted read-only and read by the peers at run time:
- a user-defined bridge network with each peer at a fixed address, SUBNET.<id + 2> (.1 is the bridge's gateway),
  which replaces the config's `peers[].address` through `--set` in the service's command;
- `cpus` = the peer's `cores`: a CFS quota on the container (the peer sizes its TensorFlow threads from `cores`);
- the links: before the peer starts, the container shapes its own egress per destination as the real method does
  (`dlion emulate shape`, HTB classes; NET_ADMIN), and the peers add the one-way latency in their transports
  (`emulation.transport_latency`), so the same file works on kernels without netem, such as this project's machines;
- the data directory (read-only) and the results directory (`output.dir`, the peers' JSONL files), bind-mounted;
- users' own data and code, read-only: each service mounts only its own peer's `peers[i].data`, the shared
  `training.data` where given, and a model or data hook given as a file (`path/to/file.py:fn`: that file),
  with the config's paths pointed at them (a hook given as a module must be installed in the image);
- the link keys (`security.mode: curve`, dlion.security): every peer's public key, and each container its own key
  pair only, bind-mounted read-only from the keys directory (`security.keys_dir`, by default keys/<name>; `dlion
  compose -o` makes missing pairs there), as Docker mounts file secrets;
- a healthcheck (the peer's ROUTER port accepts connections), `init: true` and the launcher's stop grace period.
Nothing applies scheduled changes of cores or bandwidth inside containers, so configs with such changes are refused.
Compose file format 2.4: docker-compose 1.x honours `cpus` and `init` there (3.x puts limits under swarm's `deploy`).
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from dlion import hooks, security
from dlion.config import Config
from dlion.launch import TERM_GRACE_S
from dlion.schema import ConfigError

FORMAT_VERSION = "2.4"
IMAGE = "dlion-peer"
NETWORK = "dlion"
SUBNET = "10.78.0"
MAX_PEER_ID = 252  # addresses SUBNET.2 .. SUBNET.254
DEVICE = "eth0"  # the container's interface on the network, shaped on egress
CONFIG_MOUNT = "/etc/dlion/config.yaml"
KEYS_MOUNT = "/etc/dlion/keys"
USER_MOUNT = "/srv/dlion"  # users' own data and code
DATA_MOUNT = "/data"
RESULTS_MOUNT = "/results"
HEALTHCHECK = {"interval": "10s", "timeout": "5s", "retries": 3,
               "start_period": "60s"}  # TensorFlow loads before the peer binds its port


def address(peer_id: int) -> str:
    return f"{SUBNET}.{peer_id + 2}"


def _check(cfg: Config) -> None:
    """Refuse what the containers cannot give: an address for every peer id, changes of limits during the run."""
    for i, p in enumerate(cfg.peers):
        if p.id > MAX_PEER_ID:
            raise ConfigError(f"peers[{i}].id", f"expected at most {MAX_PEER_ID} for dlion compose (peers are "
                                                f"addressed as {SUBNET}.<id + 2>)", p.id)
    for i, change in enumerate(cfg.schedule):
        if change.cores is not None or change.bandwidth is not None:
            raise ConfigError(f"schedule[{i}]", "expected only latency changes for dlion compose: a container's "
                                                "CPU limit and link shaping are fixed when it starts")


def _host_path(path: str, out_dir: Path) -> str:
    """A host path as the compose file names it: absolute stays absolute; relative (to the current directory, as
    `dlion run` reads it) becomes relative to the compose file's directory, which docker-compose resolves from."""
    if os.path.isabs(path):
        return path
    relative = os.path.relpath(Path(path).resolve(), out_dir.resolve())
    return relative if relative.startswith("..") else "./" + relative  # "./": a path, not a named volume


def keys_dir(cfg: Config) -> str:
    """Where the deployment's key pairs are on the host (relative paths: to the current directory)."""
    return cfg.security.keys_dir or str(Path("keys") / cfg.name)


def _key_volumes(cfg: Config, peer_id: int, out_dir: Path) -> list[str]:
    """Every peer's public key and this peer's own pair, read-only; nothing without CURVE."""
    if cfg.security.mode != "curve":
        return []
    host = keys_dir(cfg)
    files = [security.public_path(host, p.id) for p in cfg.peers if p.public_key is None]
    files.append(security.secret_path(host, peer_id))
    return [f"{_host_path(str(f), out_dir)}:{KEYS_MOUNT}/{f.name}:ro" for f in files]


def _mounted(spec: str | None, key: str, where: str, out_dir: Path) -> tuple[list[str], list[str]]:
    """(volume, `--set`) that put a data source or hook given as a host path into the container, or nothing for a
    hook given as a module."""
    if spec is None or (hooks.is_hook(spec) and not spec.rpartition(":")[0].endswith(".py")):
        return [], []
    if hooks.is_hook(spec):  # the file alone: its directory may hold what this container must not see
        file, _, fn = spec.rpartition(":")
        inside = f"{USER_MOUNT}/{where}/{Path(file).name}"
        return [f"{_host_path(file, out_dir)}:{inside}:ro"], [f"{key}={inside}:{fn}"]
    inside = f"{USER_MOUNT}/{where}/{Path(spec).name}"
    return [f"{_host_path(spec, out_dir)}:{inside}:ro"], [f"{key}={inside}"]


def _user_files(cfg: Config, peer_id: int, out_dir: Path) -> tuple[list[str], list[str]]:
    """The volumes and `--set`s of one service for users' own data and code (module docstring)."""
    index = cfg.peer_ids.index(peer_id)
    volumes, sets = [], []
    model = cfg.training.model if hooks.is_hook(cfg.training.model) else None  # a built-in model is no file
    for spec, key, where in ((cfg.peer(peer_id).data, f"peers.{index}.data", "own-data"),
                             (cfg.training.data, "training.data", "data"),
                             (model, "training.model", "model")):
        more_volumes, more_sets = _mounted(spec, key, where, out_dir)
        volumes += more_volumes
        sets += more_sets
    return volumes, sets


def _service(cfg: Config, peer_id: int, command: list[str], volumes: list[str]) -> dict:
    ip, port = address(peer_id), cfg.peer(peer_id).port
    probe = f"import socket; socket.create_connection(('{ip}', {port}), 3).close()"
    return {
        "image": IMAGE,
        "init": True,
        "cpus": cfg.peer(peer_id).cores,
        "cap_add": ["NET_ADMIN"],
        "environment": {"PEER_ID": str(peer_id), "DLION_SHAPE": DEVICE},
        "command": list(command),  # copies: shared lists would be dumped as YAML aliases
        "volumes": list(volumes),
        "networks": {NETWORK: {"ipv4_address": ip}},
        "healthcheck": {"test": ["CMD", "python3", "-c", probe], **HEALTHCHECK},
        "stop_grace_period": f"{TERM_GRACE_S:g}s",
        # the config's restart policy, as docker applies it (no backoff setting: docker doubles from 100 ms)
        "restart": f"on-failure:{cfg.restart.max_restarts}" if cfg.restart.policy == "on-failure" else "no",
    }


def render(cfg: Config, config_path: str, out_dir: Path, overrides=()) -> str:
    """The compose file for `cfg` (read from `config_path`, with `overrides` applied) written into `out_dir`."""
    _check(cfg)
    container_sets = [*overrides, *(f"peers.{i}.address={address(p.id)}" for i, p in enumerate(cfg.peers)),
                      "emulation.method=real", "emulation.transport_latency=true"]
    if cfg.security.mode == "curve":
        container_sets.append(f"security.keys_dir={KEYS_MOUNT}")
    config_on_host = _host_path(config_path, out_dir)
    volumes = [f"{config_on_host}:{CONFIG_MOUNT}:ro",
               f"{_host_path(cfg.output.dir, out_dir)}:{RESULTS_MOUNT}"]
    if cfg.training.dataset == "fashion-mnist" and cfg.training.data is None:
        volumes.insert(1, f"{_host_path(cfg.training.data_dir, out_dir)}:{DATA_MOUNT}:ro")
        container_sets.append(f"training.data_dir={DATA_MOUNT}")
    services = {}
    for p in cfg.peers:
        user_volumes, user_sets = _user_files(cfg, p.id, out_dir)
        command = [arg for s in [*container_sets, *user_sets] for arg in ("--set", s)]
        services[f"peer-{p.id}"] = _service(cfg, p.id, command,
                                            volumes + user_volumes + _key_volumes(cfg, p.id, out_dir))
    document = {
        "version": FORMAT_VERSION,
        "services": services,
        "networks": {NETWORK: {"driver": "bridge", "ipam": {"config": [{"subnet": f"{SUBNET}.0/24"}]}}},
    }
    header = f"# Generated from {config_on_host} by `dlion compose`: regenerate rather than edit (README: Docker).\n"
    return header + yaml.safe_dump(document, sort_keys=False, width=120)
