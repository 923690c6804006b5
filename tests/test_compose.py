"""dlion compose: the committed docker-compose.yml is the generator's output for the quickstart and a valid compose
file; every service is its peer as configured, the config the container reads gives each peer its network address;
what containers cannot do is refused; `dlion emulate shape` shapes a device of the namespace it runs in. The swarm
stack (`--swarm`) places each peer by site with its CPU limit and restart policy, names the peers by service, and
passes the link keys as secrets; docker-compose validates it. The containers themselves run in scripts/compose_e2e.sh
and scripts/swarm_e2e.sh (a real Docker engine)."""
import json
import shutil
import subprocess
import uuid

import pytest
import yaml

from conftest import PYTHON, ROOT, python_env
from dlion import compose, config
from dlion.emulate import real

CONTAINER_OK, CONTAINER_WHY = real.available()


def dlion(*args, cwd=ROOT):
    return subprocess.run([PYTHON, "-m", "dlion", *args], cwd=cwd, env=python_env(), capture_output=True, text=True,
                          timeout=60)


def test_committed_compose_file_is_the_generators_output_for_the_quickstart():
    result = dlion("compose", "configs/quickstart.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "docker-compose.yml").read_text(), \
        "docker-compose.yml is stale: run `dlion compose configs/quickstart.yaml -o docker-compose.yml`"


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (scripts/install.sh installs it)")
def test_committed_compose_file_is_valid_for_docker_compose():
    result = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


FOUR = {
    "name": "four",
    "peers": [{"id": 0, "port": 47000, "cores": 1.0}, {"id": 3, "port": 47001, "cores": 0.5},
              {"id": 7, "port": 47002, "cores": 0.25, "uplink": "10mbit"}, {"id": 9, "port": 47003}],
    "training": {"dataset": "synthetic", "max_seconds": 20},
    "output": {"dir": "results/four"},
    "schedule": [{"at": "5s", "src": 0, "dst": 3, "latency": "20ms"}],
}


def write_config(directory, raw):
    path = directory / "four.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_services_carry_each_peers_capacity_address_shaping_and_mounts(tmp_path):
    path = write_config(tmp_path, FOUR)
    out = tmp_path / "deploy" / "compose.yml"
    out.parent.mkdir()
    result = dlion("compose", path.name, "-o", "deploy/compose.yml", "--set", "training.max_seconds=30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(out.read_text())
    assert doc["version"] == compose.FORMAT_VERSION and list(doc["services"]) == ["peer-0", "peer-3", "peer-7",
                                                                                   "peer-9"]
    assert doc["networks"]["dlion"]["ipam"]["config"] == [{"subnet": "10.78.0.0/24"}]
    for peer in FOUR["peers"]:
        service = doc["services"][f"peer-{peer['id']}"]
        ip = service["networks"]["dlion"]["ipv4_address"]
        assert ip == f"10.78.0.{peer['id'] + 2}"
        assert service["cpus"] == peer.get("cores", 1.0)
        assert service["environment"] == {"PEER_ID": str(peer["id"]), "DLION_SHAPE": "eth0"}
        assert service["cap_add"] == ["NET_ADMIN"] and service["init"] is True
        assert service["stop_grace_period"] == "20s" and f"('{ip}', {peer['port']})" in service["healthcheck"]["test"][3]
        # paths are relative to the compose file; no data mount for the synthetic set; every public key and the
        # service's own key pair only (made by `dlion compose -o`)
        keys = [f"../keys/four/peer-{p['id']}.key:/etc/dlion/keys/peer-{p['id']}.key:ro" for p in FOUR["peers"]]
        own = f"../keys/four/peer-{peer['id']}.key_secret:/etc/dlion/keys/peer-{peer['id']}.key_secret:ro"
        assert service["volumes"] == ["../four.yaml:/etc/dlion/config.yaml:ro", "../results/four:/results", *keys, own]
        assert (tmp_path / "keys" / "four" / f"peer-{peer['id']}.key_secret").exists()
        # what the container's peer reads: the config file with the service's overrides
        sets = service["command"][1::2]
        assert service["command"][::2] == ["--set"] * len(sets)
        seen = config.load(path, sets)
        assert seen.peer(peer["id"]).address == ip and seen.training.max_seconds == 30
        assert (seen.emulation.method, seen.emulation.transport_latency) == ("real", True)
        assert seen.security.keys_dir == "/etc/dlion/keys"
        assert {p.id: p.address for p in seen.peers} == {0: "10.78.0.2", 3: "10.78.0.5", 7: "10.78.0.9",
                                                         9: "10.78.0.11"}


def test_fashion_mnist_is_mounted_read_only_where_the_container_reads_it(tmp_path):
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = doc["services"]["peer-0"]
    assert "/usr/share/datasets/fashion-mnist:/data:ro" in service["volumes"]
    assert config.load(ROOT / "configs" / "quickstart.yaml", service["command"][1::2]).training.data_dir == "/data"


@pytest.mark.parametrize("change, key", [
    ({"schedule": [{"at": "5s", "src": 0, "dst": 3, "bandwidth": "1mbit"}]}, "schedule[0]"),
    ({"schedule": [{"at": "5s", "peer": 3, "cores": 0.1}]}, "schedule[0]"),
    ({"peers": [{"id": 253, "port": 47000}], "schedule": []}, "peers[0].id"),
])
def test_what_containers_cannot_do_is_a_config_error(tmp_path, change, key):
    path = write_config(tmp_path, {**FOUR, **change})
    result = dlion("compose", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"dlion: config error: {key}: ")


def test_shape_needs_a_peer_id():
    result = dlion("emulate", "shape", "configs/quickstart.yaml")
    assert result.returncode == 2 and "--id" in result.stderr


@pytest.mark.skipif(not CONTAINER_OK, reason=f"needs root, tc and network namespaces: {CONTAINER_WHY}")
def test_shape_in_place_gives_each_destination_its_class_and_replaces_earlier_shaping(tmp_path):
    """A namespace stands in for a peer's container: `dlion emulate shape` runs inside it, as the entry point does."""
    path = write_config(tmp_path, {**FOUR, "links": {"overrides": [{"src": 3, "dst": 9, "bandwidth": "50mbit"}]}})
    ns = f"dlshape-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        sets = yaml.safe_load(compose.render(config.load(path), str(path), tmp_path))["services"]["peer-3"]["command"]
        for _ in range(2):  # a restarted container shapes again
            result = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-m", "dlion", "emulate", "shape", str(path),
                                     "--id", "3", *sets], env=python_env(), capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            classes = json.loads(result.stdout)
            assert {c: (v["dst"], v["rate_bps"]) for c, v in classes.items()} == {
                "1:1": (None, 10e9), "1:2": (0, 1e9), "1:9": (7, 1e9), "1:b": (9, 50e6)}
        filters = subprocess.run(["ip", "netns", "exec", ns, "tc", "filter", "show", "dev", "eth0"],
                                 capture_output=True, text=True, check=True).stdout
        assert filters.count("flowid") == 3 and "match 0a4e000b/ffffffff at 16" in filters  # 10.78.0.11 -> 1:b
        qdiscs = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", "eth0"],
                                capture_output=True, text=True, check=True).stdout
        assert qdiscs.count("pfifo") == 3 and "netem" not in qdiscs  # latency: in the transports
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_each_service_mounts_only_its_own_data_and_the_model_file(tmp_path):
    result = dlion("compose", "examples/own-data.yaml")
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    for peer in range(3):
        service = doc["services"][f"peer-{peer}"]
        mounts = [v for v in service["volumes"] if "/srv/dlion/" in v]
        assert mounts == [f"./examples/data/peer-{peer}.npz:/srv/dlion/own-data/peer-{peer}.npz:ro",
                          "./examples/custom_model.py:/srv/dlion/model/custom_model.py:ro"]
        seen = config.load(ROOT / "examples" / "own-data.yaml", service["command"][1::2])
        assert seen.peer(peer).data == f"/srv/dlion/own-data/peer-{peer}.npz"
        assert seen.training.model == "/srv/dlion/model/custom_model.py:build"


def swarm_stack(config_path, *args, cwd=ROOT):
    result = dlion("compose", str(config_path), "--swarm", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize("path, sets, sites, cpus, restart", [
    ("configs/quickstart.yaml", [], ["peer-0", "peer-1", "peer-2"], ["0.66"] * 3,
     {"condition": "on-failure", "max_attempts": 3, "delay": "2s"}),
    ("configs/scenarios/hetero-4.yaml", ["--set", "peers.1.site=cloud-b", "--set", "peers.3.site=cloud-b"],
     ["peer-0", "cloud-b", "peer-2", "cloud-b"], ["1", "0.5", "0.3", "0.2"], {"condition": "none"}),
])
def test_swarm_stack_places_limits_restarts_and_names_every_peer(path, sets, sites, cpus, restart):
    doc = swarm_stack(path, *sets)
    cfg = config.load(ROOT / path)
    ids = [p.id for p in cfg.peers]
    assert doc["version"].startswith("3.") and list(doc["services"]) == [f"peer-{i}" for i in ids]
    assert doc["networks"] == {"dlion": {"driver": "overlay", "attachable": True}}
    keys = f"./keys/{cfg.name}"
    assert doc["secrets"] == {**{f"peer-{i}.key": {"file": f"{keys}/peer-{i}.key"} for i in ids},
                              **{f"peer-{i}.key_secret": {"file": f"{keys}/peer-{i}.key_secret"} for i in ids}}
    for i, site, limit in zip(ids, sites, cpus):
        service = doc["services"][f"peer-{i}"]
        deploy = service["deploy"]
        assert deploy["placement"] == {"constraints": [f"node.labels.dlion.site == {site}"]}
        assert deploy["resources"] == {"limits": {"cpus": limit}} and deploy["replicas"] == 1
        assert deploy["restart_policy"] == restart and deploy["endpoint_mode"] == "dnsrr"
        assert service["networks"] == ["dlion"] and service["environment"] == {"PEER_ID": str(i)}
        assert "cap_add" not in service and "cpus" not in service and "restart" not in service  # swarm's: deploy
        # every public key and the service's own pair, where the peer reads them, for the peer's user only
        own = [f"peer-{p}.key" for p in ids] + [f"peer-{i}.key_secret"]
        assert service["secrets"] == [{"source": name, "target": f"/etc/dlion/keys/{name}", "uid": "1000",
                                       "gid": "1000", "mode": 0o400} for name in own]
        assert service["volumes"] == [f"./{path}:/etc/dlion/config.yaml:ro",
                                      "/usr/share/datasets/fashion-mnist:/data:ro", f"./{cfg.output.dir}:/results"]
        port = cfg.peer(i).port
        assert f"('127.0.0.1', {port})" in service["healthcheck"]["test"][3]
        # what the container's peer reads: every peer at its service name, listening on every interface, no emulation
        seen = config.load(ROOT / path, service["command"][1::2])
        assert {p.id: p.address for p in seen.peers} == {p: f"peer-{p}" for p in ids}
        assert seen.transport.listen == "0.0.0.0" and seen.emulation.method == "none"
        assert seen.security.keys_dir == "/etc/dlion/keys" and seen.training.data_dir == "/data"


def test_swarm_stack_without_curve_has_no_secrets(tmp_path):
    path = write_config(tmp_path, {**FOUR, "schedule": [], "security": {"mode": "none"}})
    doc = swarm_stack(path.name, cwd=tmp_path)
    assert "secrets" not in doc and all("secrets" not in s for s in doc["services"].values())
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize("change, key", [
    ({"peers": [{**FOUR["peers"][0], "site": "cloud a"}, *FOUR["peers"][1:]]}, "peers[0].site"),
    ({"peers": [{**FOUR["peers"][0], "site": "-a"}, *FOUR["peers"][1:]]}, "peers[0].site"),
    ({"schedule": [{"at": "5s", "src": 0, "dst": 3, "latency": "20ms"}]}, "schedule[0]"),  # no emulation at all
])
def test_what_a_swarm_cannot_do_is_a_config_error(tmp_path, change, key):
    path = write_config(tmp_path, {**FOUR, "schedule": [], **change})
    result = dlion("compose", str(path), "--swarm")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"dlion: config error: {key}: expected ")
    if key.endswith("site"):
        assert "letters, digits, '.', '_' or '-'" in result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (scripts/install.sh installs it)")
def test_swarm_stack_file_is_valid_for_docker_compose(tmp_path):
    """docker-compose validates format 3.x files too (deploy, secrets with targets, overlay networks)."""
    path = write_config(tmp_path, {**FOUR, "schedule": []})
    (tmp_path / "deploy").mkdir()
    result = dlion("compose", path.name, "--swarm", "-o", "deploy/stack.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dlion.site: peer-0, peer-3, peer-7, peer-9" in result.stderr
    assert (tmp_path / "keys" / "four" / "peer-9.key_secret").exists()  # the secrets' files, made by -o
    result = subprocess.run(["docker-compose", "-f", "deploy/stack.yml", "config", "-q"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_entry_point_keeps_a_crashed_peers_events_and_resumes_it_but_starts_a_new_run_afresh(tmp_path):
    """peers/entrypoint.sh with a stand-in `dlion` that prints its arguments: a container restarted after a crash
    (its log has no final event) continues; a new run (no log, or a finished one) drops the old events."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, script in (("dlion", 'echo "$@"'), ("id", "echo 1000")):  # not root: no shaping, no user switch
        (bindir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bindir / name).chmod(0o755)
    out = tmp_path / "results"
    out.mkdir()
    log = out / "peer-1.jsonl"
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "PEER_ID": "1", "DLION_OUT": str(out), "DLION_CONFIG": "c.yaml"}

    def start():
        result = subprocess.run(["sh", str(ROOT / "peers" / "entrypoint.sh"), "--set", "a=b"], env=env,
                                capture_output=True, text=True, check=True)
        return result.stdout.split()

    assert "--resume-at" not in start()
    log.write_text('{"ev":"start","peer":1}\n{"ev":"iter","peer":1,"it":10}\n')  # crashed mid-run
    args = start()
    assert args[args.index("--resume-at") + 1] == "latest" and log.exists() and args[-2:] == ["--set", "a=b"]
    log.write_text('{"ev":"start","peer":1}\n{"ev":"final","peer":1}\n')  # that run ended: this is a new one
    assert "--resume-at" not in start() and not log.exists()
