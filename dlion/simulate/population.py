"""Many peers without listing them: a config's `population` block draws them from distributions.

    population:
      count: 256                                   # `dlion simulate --peers N` overrides it
      cores: {mean: 1.0, sigma: 0.5, min: 0.2, max: 4}   # lognormal, clipped
      links:                                       # each peer's access link, from named classes
        - {name: fiber, probability: 0.5, bandwidth: 1gbit, latency: 2ms}
        - {name: dsl, probability: 0.5, bandwidth: 20mbit, latency: 15ms}

`expand` turns the block into an ordinary `peers` list before the config is validated, so everything downstream
(links from access links, the topology, the resolved config a run writes) sees plain peers: peer i gets id i, port
`first_port + i`, cores drawn from a lognormal with the given mean (of the cores, not of their log) and log-space
`sigma`, clipped to [min, max], and an access link (uplink = downlink = the class's bandwidth, its latency) of a
class drawn with the classes' probabilities; without classes the config's `links` apply. The draws come from
`seed` (default: the config's), so the same config always gives the same peers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from dlion.schema import (BANDWIDTH, DURATION, ConfigError, between, build, non_negative, option, parse_bandwidth,
                          parse_duration, positive)

DEFAULT_FIRST_PORT = 47000


@dataclass(frozen=True)
class Cores:
    mean: float = option(1.0, check=positive, expect="a positive number: the mean cores of a peer (of the cores, "
                                                      "not of their log)")
    sigma: float = option(0.0, check=non_negative,
                          expect="a non-negative number: the standard deviation of the log of a peer's cores (0: "
                                 "every peer gets the mean)")
    min: float = option(0.1, check=positive, expect="a positive number of cores: draws below are raised to it")
    max: float = option(16.0, check=positive, expect="a positive number of cores: draws above are lowered to it")

    def validate(self, path: str) -> None:
        if self.min > self.max:
            raise ConfigError(f"{path}.min", f"expected at most max ({self.max:g})", self.min)


@dataclass(frozen=True)
class LinkClass:
    name: str = option(expect="a name for the class of access links, e.g. fiber")
    probability: float = option(check=lambda p: 0 < p <= 1,
                                expect="a number in (0, 1]: the share of peers drawn into this class (the classes' "
                                       "shares add up to 1)")
    bandwidth: float = option(parse=parse_bandwidth, expect=BANDWIDTH + ": the access link's rate, up and down")
    latency: float = option(0.0, parse=parse_duration, expect=DURATION + ": the access link's one-way latency")


@dataclass(frozen=True)
class Population:
    count: int = option(check=positive, expect="a positive number of peers to generate")
    seed: Optional[int] = option(None, check=non_negative,
                                 expect="a non-negative integer to draw the peers from, or null: the config's seed")
    address: str = "127.0.0.1"
    first_port: int = option(DEFAULT_FIRST_PORT, check=between(1, 65535),
                             expect="an integer in 1..65535: peer i listens on first_port + i")
    cores: Cores = Cores()
    links: tuple[LinkClass, ...] = option(
        (), expect="a list of access-link classes {name, probability, bandwidth, latency}, or [] for the config's "
                   "links block")

    def validate(self, path: str) -> None:
        if self.first_port + self.count - 1 > 65535:
            raise ConfigError(f"{path}.first_port", f"expected room for {self.count} ports below 65536",
                              self.first_port)
        names = [c.name for c in self.links]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}.links", f"expected distinct class names, got {names}")
        if self.links and not math.isclose(sum(c.probability for c in self.links), 1.0, abs_tol=1e-6):
            raise ConfigError(f"{path}.links", f"expected probabilities that add up to 1, got "
                                               f"{sum(c.probability for c in self.links):g}")


def generate(population: Population, seed: int) -> list[dict]:
    """The peers of `population` as config entries (raw, with units, as a config file writes them)."""
    rng = np.random.default_rng(population.seed if population.seed is not None else seed)
    cores = population.cores
    mu = math.log(cores.mean) - cores.sigma ** 2 / 2  # the lognormal whose mean is `cores.mean`
    drawn = np.clip(rng.lognormal(mu, cores.sigma, population.count), cores.min, cores.max)
    classes = population.links
    picks = (rng.choice(len(classes), size=population.count, p=[c.probability for c in classes])
             if classes else [None] * population.count)
    peers = []
    for i, (c, pick) in enumerate(zip(drawn, picks)):
        peer = {"id": i, "address": population.address, "port": population.first_port + i,
                "cores": max(cores.min, round(float(c), 3))}
        if pick is not None:
            link = classes[pick]
            bandwidth = parse_bandwidth.format(link.bandwidth)
            peer.update(uplink=bandwidth, downlink=bandwidth, latency=parse_duration.format(link.latency))
        peers.append(peer)
    return peers


def expand(raw: dict, count: int | None = None) -> dict:
    """A config mapping with its `population` block (if any) replaced by the peers it generates; `count` (`--peers
    N`) overrides the block's count, or, for a config that lists its peers, repeats that list in order to N peers
    numbered 0..N-1 (ports counted up from the first peer's). Raises ConfigError naming the key."""
    if raw.get("population") is None:
        raw = {k: v for k, v in raw.items() if k != "population"}
        if count is None:
            return raw
        if count < 1:
            raise ConfigError("--peers", "expected a positive number of peers", count)
        listed = raw.get("peers")
        if not isinstance(listed, list) or not listed or not all(isinstance(p, dict) for p in listed):
            return raw  # the config's own check names what is wrong with its peers
        first = listed[0].get("port")
        first = first if isinstance(first, int) and not isinstance(first, bool) else DEFAULT_FIRST_PORT
        return {**raw, "peers": [{**listed[i % len(listed)], "id": i, "port": first + i} for i in range(count)]}
    if raw.get("peers") is not None:
        raise ConfigError("population", "expected either a peers list or a population block, not both")
    population = build(Population, raw["population"], "population")
    if count is not None:
        if count < 1:
            raise ConfigError("--peers", "expected a positive number of peers", count)
        population = replace(population, count=count)
        population.validate("population")
    seed = raw.get("seed", 0)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0  # the config names it
    rest: dict[str, Any] = {k: v for k, v in raw.items() if k != "population"}
    return {**rest, "peers": generate(population, seed)}
