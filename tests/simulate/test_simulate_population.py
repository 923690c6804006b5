"""A config's population block: peers drawn from distributions, validated like the rest of the config."""
import math

import numpy as np
import pytest

from dlion.config import parse, to_dict
from dlion.schema import ConfigError

BASE = {"training": {"max_iterations": 10, "global_batch": 4096}, "topology": {"kind": "ring"}}  # ring: quick to check


def population(**block):
    return parse({**BASE, "population": {"count": 200, **block}})


def test_the_same_block_gives_the_same_peers_and_the_seed_others():
    block = {"cores": {"mean": 1.0, "sigma": 0.6}, "links": [
        {"name": "fiber", "probability": 0.25, "bandwidth": "1gbit", "latency": "2ms"},
        {"name": "dsl", "probability": 0.75, "bandwidth": "20mbit", "latency": "20ms"}]}
    first, second = population(**block), population(**block)
    assert first.peers == second.peers
    assert population(seed=7, **block).peers != first.peers
    assert [p.id for p in first.peers] == list(range(200))
    assert len({(p.address, p.port) for p in first.peers}) == 200


def test_cores_are_lognormal_around_the_mean_and_clipped():
    cfg = population(count=4000, cores={"mean": 2.0, "sigma": 0.5, "min": 0.5, "max": 6})
    cores = np.array([p.cores for p in cfg.peers])
    assert cores.min() >= 0.5 and cores.max() <= 6
    assert np.mean(cores) == pytest.approx(2.0, rel=0.05)
    assert np.std(np.log(cores)) == pytest.approx(0.5, rel=0.1)
    assert {p.cores for p in population(cores={"mean": 1.5}).peers} == {1.5}  # sigma 0: all at the mean


def test_access_links_come_from_the_classes_in_proportion():
    cfg = population(count=2000, links=[{"name": "fiber", "probability": 0.2, "bandwidth": "1gbit", "latency": "1ms"},
                                        {"name": "dsl", "probability": 0.8, "bandwidth": "10mbit", "latency": "30ms"}])
    fiber = [p for p in cfg.peers if p.uplink == 1e9]
    assert len(fiber) / 2000 == pytest.approx(0.2, abs=0.03)
    assert all(p.downlink == p.uplink and p.latency == (0.001 if p.uplink == 1e9 else 0.030) for p in cfg.peers)
    slow = next(p.id for p in cfg.peers if p.uplink == 1e7)
    assert cfg.link(fiber[0].id, slow).bandwidth == 1e7  # the smaller end
    assert cfg.link(fiber[0].id, slow).latency == pytest.approx(0.031)


def test_peers_overrides_the_count_and_repeats_a_listed_peers():
    cfg = parse({**BASE, "population": {"count": 10}}, peers=3)
    assert cfg.peer_ids == (0, 1, 2)
    listed = parse({**BASE, "peers": [{"id": 0, "port": 47800, "cores": 2.0}, {"id": 1, "port": 47801}]}, peers=5)
    assert listed.peer_ids == (0, 1, 2, 3, 4)
    assert [p.cores for p in listed.peers] == [2.0, 1.0, 2.0, 1.0, 2.0]
    assert [p.port for p in listed.peers] == [47800 + i for i in range(5)]


def test_the_resolved_config_lists_the_generated_peers_and_reloads_to_them():
    cfg = population(count=5, cores={"mean": 1.0, "sigma": 0.3},
                     links=[{"name": "one", "probability": 1.0, "bandwidth": "50mbit", "latency": "5ms"}])
    assert parse(to_dict(cfg)).peers == cfg.peers


@pytest.mark.parametrize("block, path, words", [
    ({"count": 0}, "population.count", "positive number of peers"),
    ({"count": 3, "cores": {"mu": 1}}, "population.cores.mu", "unknown key"),
    ({"count": 3, "cores": {"min": 2, "max": 1}}, "population.cores.min", "at most max"),
    ({"count": 3, "links": [{"name": "a", "probability": 0.5, "bandwidth": "1gbit"}]}, "population.links",
     "add up to 1"),
    ({"count": 3, "links": [{"name": "a", "probability": 1, "bandwidth": 100}]}, "population.links[0].bandwidth",
     "unit"),
    ({"count": 3, "first_port": 65534}, "population.first_port", "room for 3 ports"),
    ({}, "population.count", "required"),
])
def test_a_wrong_block_names_its_key_and_the_expected_form(block, path, words):
    with pytest.raises(ConfigError) as err:
        parse({**BASE, "population": block})
    assert str(err.value).startswith(path + ":") and words in str(err.value)


def test_peers_and_a_population_together_are_refused():
    with pytest.raises(ConfigError, match="^population: expected either a peers list or a population block"):
        parse({**BASE, "peers": [{"id": 0, "port": 47900}], "population": {"count": 2}})
    with pytest.raises(ConfigError, match="^--peers: expected a positive number"):
        parse({**BASE, "population": {"count": 2}}, peers=0)
    assert math.isclose(parse({**BASE, "population": {"count": 2}}).peers[0].cores, 1.0)
