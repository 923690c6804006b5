"""Who sends to whom at round t: static and time-varying directed graphs, their mixing weights, connectivity checks.

Every peer builds the same `Topology` from the config and asks it about any round; the answer is a pure function of
(spec, peer ids, round), so all peers agree on the graph of every round without a coordinator. Peer ids are arbitrary
ints; the position-based kinds work on their sorted order (position p is the p-th smallest id).

Static kinds (the same graph every round, `period` 1):
  ring              undirected ring: each peer sends to both its neighbours
  directed-ring     position p sends to p + 1
  exponential       p sends to p + 2^k (mod n) for k = 0 .. floor(log2(n - 1))
  full              everyone sends to everyone
  edges             an explicit list of directed edges [src, dst]
Time-varying kinds (directed):
  one-peer-exponential  at round t, p sends to p + 2^(t mod m) (mod n), m = ceil(log2 n): one message per peer and
                        round, and every peer's model reaches every other within m rounds (`period` m)
  random-k-out          at round t, every peer sends to k distinct others drawn from a numpy Generator seeded with
                        (seed, t); the draws are made for all peers in position order, so every peer computes the
                        same graph (needs the same numpy on all peers, as one image gives). Aperiodic (`period` None)
  sequence              an explicit list of edge lists; round t uses entry t mod len (`period` len)

The gossip mixes with push-sum's weights: a sender splits its mass equally among itself and its out-neighbours
(column-stochastic; a directed graph generally has no doubly stochastic weights a sender could choose alone).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

STATIC_KINDS = ("ring", "directed-ring", "exponential", "full", "edges")
TIME_VARYING_KINDS = ("one-peer-exponential", "random-k-out", "sequence")
KINDS = STATIC_KINDS + TIME_VARYING_KINDS
MIN_RANDOM_WINDOW = 8  # random-k-out is checked over the first max(8, n) rounds

Edge = tuple[int, int]


class TopologyError(ValueError):
    """A spec that does not fit the peers: `where` is the spec's key (e.g. "edges[2]", "" for the whole), so a config
    can name its own key path."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem
        super().__init__(f"topology{' ' + where if where else ''}: {problem}")


@dataclass(frozen=True)
class TopologySpec:
    """What the config says: the kind and, depending on it, the edges, k and seed, or the sequence of edge lists."""

    kind: str = "full"
    edges: tuple[Edge, ...] = ()
    k: int = 1
    seed: int = 0
    sequence: tuple[tuple[Edge, ...], ...] = ()


class Topology:
    """The graph of every round for `peer_ids`; raises ValueError on a spec that does not fit them."""

    def __init__(self, spec: TopologySpec, peer_ids: Iterable[int]):
        ids = list(peer_ids)
        if not ids:
            raise TopologyError("", "expected at least one peer")
        if len(set(ids)) != len(ids):
            raise TopologyError("", f"peer ids must be unique, got {ids}")
        self.spec = spec
        self.ids = tuple(sorted(ids))
        self._validate()
        n = len(self.ids)
        if spec.kind in STATIC_KINDS:
            self.period: int | None = 1
        elif spec.kind == "one-peer-exponential":
            self.period = max(1, math.ceil(math.log2(n))) if n > 1 else 1
        elif spec.kind == "sequence":
            self.period = len(spec.sequence)
        else:
            self.period = None
        self._cache: dict[int, dict[int, tuple[int, ...]]] = {}  # by round (mod period), or the latest random round
        self._in_cache: dict[int, dict[int, tuple[int, ...]]] = {}

    # ---- validation -------------------------------------------------------------------------------------------

    def _validate(self) -> None:
        spec, n = self.spec, len(self.ids)
        if spec.kind not in KINDS:
            raise TopologyError("kind", f"unknown kind {spec.kind!r}; expected one of: {', '.join(KINDS)}")
        if spec.edges and spec.kind != "edges":
            raise TopologyError("edges", f"edges are only for kind edges, not {spec.kind}")
        if spec.sequence and spec.kind != "sequence":
            raise TopologyError("sequence", f"a sequence is only for kind sequence, not {spec.kind}")
        if spec.kind == "edges":
            self._check_edges(spec.edges, "edges")
            if not spec.edges and n > 1:
                raise TopologyError("edges", "expected at least one edge for kind edges")
        if spec.kind == "sequence":
            if not spec.sequence:
                raise TopologyError("sequence", "expected at least one edge list for kind sequence")
            for i, edges in enumerate(spec.sequence):
                self._check_edges(edges, f"sequence[{i}]")
        if spec.kind == "random-k-out":
            if not (isinstance(spec.k, int) and 1 <= spec.k <= max(1, n - 1)):
                raise TopologyError("k", f"expected an integer in 1..{max(1, n - 1)} (the number of other peers) "
                                         f"for random-k-out, got {spec.k!r}")
            if not (isinstance(spec.seed, int) and spec.seed >= 0):
                raise TopologyError("seed", f"expected a non-negative integer, got {spec.seed!r}")

    def _check_edges(self, edges, where: str) -> None:
        known = set(self.ids)
        for i, edge in enumerate(edges):
            if len(edge) != 2:
                raise TopologyError(f"{where}[{i}]", f"expected a [src, dst] pair, got {list(edge)}")
            src, dst = edge
            unknown = [p for p in (src, dst) if p not in known]
            if unknown:
                raise TopologyError(f"{where}[{i}]", f"edge [{src}, {dst}] names {unknown[0]}, which is not a peer id "
                                 f"(peers: {list(self.ids)})")
            if src == dst:
                raise TopologyError(f"{where}[{i}]", f"edge [{src}, {dst}] is a self loop")

    # ---- the graph of a round ---------------------------------------------------------------------------------

    def graph(self, round_: int) -> dict[int, tuple[int, ...]]:
        """Out-neighbours (sorted) of every peer at `round_`."""
        if round_ < 0:
            raise ValueError(f"topology: rounds start at 0, got {round_}")
        key = round_ if self.period is None else round_ % self.period
        graph = self._cache.get(key)
        if graph is None:
            graph = self._build(key)
            if self.period is None:  # random rounds are asked for in order: keep only the latest
                self._cache.clear()
                self._in_cache.clear()
            self._cache[key] = graph
        return graph

    def _build(self, round_: int) -> dict[int, tuple[int, ...]]:
        ids, n, kind = self.ids, len(self.ids), self.spec.kind
        if kind in ("edges", "sequence"):
            edges = self.spec.edges if kind == "edges" else self.spec.sequence[round_]
            out: dict[int, set[int]] = {p: set() for p in ids}
            for src, dst in edges:
                out[src].add(dst)
            return {p: tuple(sorted(out[p])) for p in ids}
        if n == 1:
            return {ids[0]: ()}
        if kind == "random-k-out":
            rng = np.random.default_rng([self.spec.seed, round_])
            graph = {}
            for pos, p in enumerate(ids):
                others = ids[:pos] + ids[pos + 1:]
                picks = rng.choice(n - 1, size=self.spec.k, replace=False)
                graph[p] = tuple(sorted(others[i] for i in picks))
            return graph
        if kind == "full":
            offsets = range(1, n)
        elif kind == "ring":
            offsets = {1, n - 1}
        elif kind == "directed-ring":
            offsets = [1]
        elif kind == "exponential":
            offsets = [2 ** k for k in range(int(math.log2(n - 1)) + 1)]
        else:  # one-peer-exponential; round_ is already taken mod the period
            offsets = [2 ** round_]
        return {p: tuple(sorted({ids[(pos + off) % n] for off in offsets})) for pos, p in enumerate(ids)}

    def out_neighbours(self, peer: int, round_: int) -> tuple[int, ...]:
        return self.graph(round_)[self._known(peer)]

    def in_neighbours(self, peer: int, round_: int) -> tuple[int, ...]:
        self._known(peer)
        graph = self.graph(round_)
        key = round_ if self.period is None else round_ % self.period
        incoming = self._in_cache.get(key)
        if incoming is None:
            lists: dict[int, list[int]] = {p: [] for p in self.ids}
            for src in self.ids:
                for dst in graph[src]:
                    lists[dst].append(src)
            incoming = self._in_cache[key] = {p: tuple(v) for p, v in lists.items()}
        return incoming[peer]

    def destinations(self, peer: int) -> tuple[int, ...]:
        """Every peer that `peer` sends to in some round (over one period, or the random kinds' check window), e.g.
        to shape or to plot its links."""
        return tuple(sorted(self._union()[self._known(peer)]))

    def _window(self) -> int:
        return self.period or max(MIN_RANDOM_WINDOW, len(self.ids))

    def _union(self) -> dict[int, set[int]]:
        union: dict[int, set[int]] = {p: set() for p in self.ids}
        for r in range(self._window()):
            for src, dsts in self.graph(r).items():
                union[src].update(dsts)
        return union

    def _known(self, peer: int) -> int:
        if peer not in self.ids:
            raise ValueError(f"topology: {peer} is not a peer id (peers: {list(self.ids)})")
        return peer

    # ---- connectivity -----------------------------------------------------------------------------------------

    def check_strongly_connected(self) -> None:
        """Raise ValueError, naming who cannot reach whom, unless the union of the graphs over one period (for
        random-k-out: over the first max(8, n) rounds, a fixed window since the schedule never repeats) is strongly
        connected; push-sum needs that for every peer's mass to reach every other peer."""
        rounds = self._window()
        union = self._union()
        backward: dict[int, set[int]] = {p: set() for p in self.ids}
        for src, dsts in union.items():
            for dst in dsts:
                backward[dst].add(src)
        root = self.ids[0]
        unreached = sorted(set(self.ids) - _reachable(root, union))
        unreaching = sorted(set(self.ids) - _reachable(root, backward))
        if not unreached and not unreaching:
            return
        over = f"its period of {rounds} round(s)" if self.period else f"its first {rounds} rounds"
        problems = []
        if unreached:
            problems.append(f"peer(s) {unreached} cannot be reached from peer {root}")
        if unreaching:
            problems.append(f"peer {root} cannot be reached from peer(s) {unreaching}")
        raise TopologyError("", f"{self.spec.kind} is not strongly connected over {over}: " + "; ".join(problems))


def _reachable(start: int, adjacency: dict[int, set[int]]) -> set[int]:
    seen, todo = {start}, [start]
    while todo:
        for q in adjacency[todo.pop()]:
            if q not in seen:
                seen.add(q)
                todo.append(q)
    return seen
