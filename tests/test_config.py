"""Config validation: every mistake gives one message naming the key path and the expected form."""
import copy
import dataclasses
import math
import typing

import pytest

from dlion import config
from dlion.schema import ConfigError, parse_bandwidth, parse_duration
from dlion.simulate import population

BASE = {
    "peers": [{"id": 0, "port": 47000}, {"id": 1, "port": 47001}, {"id": 2, "port": 47002, "cores": 0.5}],
    "training": {"max_iterations": 10},
}


def parse(overrides=(), **sections):
    raw = copy.deepcopy(BASE)
    raw.update(sections)
    return config.parse(raw, overrides)


def error(overrides=(), **sections) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(overrides, **sections)
    return str(exc.value)


def test_defaults_and_derived_values():
    cfg = parse()
    assert cfg.peer_ids == (0, 1, 2)
    assert cfg.peer(2).cores == 0.5 and cfg.peer(2).tf_threads == 1
    assert parse(["peers.0.cores=1.5"]).peer(0).tf_threads == 2
    assert cfg.strategies.exchange.kind == "dense" and cfg.strategies.exchange.params.deadline_s > 0
    assert cfg.destinations(1) == (0, 2)
    assert cfg.link(0, 1).bandwidth == 1e9 and cfg.emulation.method == "none" and cfg.schedule == ()
    assert [p.site_name for p in parse(["peers.1.site=cloud-b"]).peers] == ["peer-0", "cloud-b", "peer-2"]
    assert cfg.transport.listen is None  # the ROUTER binds the peer's own address


def test_shipped_configs_are_valid():
    from conftest import ROOT
    cfg = config.load(ROOT / "configs" / "quickstart.yaml")
    assert len(cfg.peers) >= 3 and cfg.training.dataset == "fashion-mnist"
    hetero = config.load(ROOT / "configs" / "scenarios" / "hetero-4.yaml")
    assert [p.cores for p in hetero.peers] == [1.0, 0.5, 0.3, 0.2]
    assert hetero.link(0, 3).bandwidth == 1e7 and hetero.link(2, 1).bandwidth == 5e7
    dynamic = config.load(ROOT / "configs" / "scenarios" / "dynamic-4.yaml")
    assert dynamic.cores(0, at=30) == 0.2 and dynamic.cores(3, at=30) == 1.0
    assert dynamic.link(0, 1, at=30).bandwidth == 1e7 and dynamic.link(0, 1, at=29).bandwidth == 1e8


@pytest.mark.parametrize("overrides, expected", [
    (["peers.1.port=abc"], "peers[1].port: expected an integer in 1..65535, got 'abc'"),
    (["peers.1.colour=red"], "peers[1].colour: unknown key; expected one of: id, port, address, cores, threads"),
    (["peers.1.cores=-1"], "peers[1].cores: expected a positive number of CPU cores"),
    (["peers.1.port=47000"], "peers[1].port: expected a unique address and port; 127.0.0.1:47000 is already used"),
    (["peers.2.id=0"], "peers[2].id: expected a unique id; 0 is already used by peers[0]"),
    (["peers.2.site=cloud a"], "peers[2].site: expected the micro-cloud this peer runs at, a site name of up to 63 "
                               "letters, digits, '.', '_' or '-' starting with a letter or digit"),
    (["transport.listen=' '"], "transport.listen: expected a host for a peer's own port to listen on"),
    (["training.global_batch=2"], "training.global_batch: expected at least the number of peers (3), got 2"),
    (["training.optimizer=adamx"], "training.optimizer: expected a Keras optimizer name, one of: adadelta, adagrad, "
                                   "adam, adamax, adamw"),
    (["training.optimizer_params.beta1=0.9"], "training.optimizer_params.beta1: unknown keyword argument of "
                                              "optimizer adam; expected one of: beta_1"),
    (["training.max_iterations=null"], "training: no stop condition"),
    (["training.target_accuracy=1.5"], "training.target_accuracy: expected an accuracy in [0, 1]"),
    (["training.partition.kind=shards"], "training.partition.kind: expected one of: iid, dirichlet, label-sorted"),
    (["links.default.bandwidth=-5mbit"], "links.default.bandwidth: expected a positive bandwidth"),
    (["links.default.latency=fast"], "links.default.latency: expected a non-negative duration"),
    (["strategies.exchange.kind=hogwild"], "strategies.exchange.kind: expected a strategy kind, one of: dense"),
    (["strategies.exchange.deadline_s=0"], "strategies.exchange.deadline_s: expected a positive number of seconds"),
    (["strategies.exchange.topk=3"], "strategies.exchange.topk: unknown key; expected one of: deadline_s"),
    (["strategies.exchange.kind=gaia", "strategies.exchange.threshold=0"],
     "strategies.exchange.threshold: expected a positive number: at round 0"),
    (["strategies.exchange.kind=gaia", "strategies.exchange.decay_rounds=-1"],
     "strategies.exchange.decay_rounds: expected a positive number of rounds"),
    (["strategies.exchange.kind=ako", "strategies.exchange.partitions=0"],
     "strategies.exchange.partitions: expected a positive integer"),
    (["strategies.exchange.kind=ako", "strategies.exchange.partitions=1.5"],
     "strategies.exchange.partitions: expected a positive integer"),
    (["strategies.exchange.kind=ako", "strategies.exchange.threshold=0.01"],
     "strategies.exchange.threshold: unknown key"),
    (["strategies.gossip.kind=ad-psgd", "strategies.gossip.mixing=1"],
     "strategies.gossip.mixing: expected a number in (0, 1)"),
    (["evaluation.subset=20000"], "evaluation.subset: expected an integer in 1..10000"),
    (["topology.kind=edges"], "topology.edges: expected at least one edge for kind edges"),
    (["peers.7.port=1"], "peers: expected a list index below 3, got '7'"),
    (["peers.\u00b2.port=1"], "peers: expected a list index below 3, got '\u00b2'"),  # int() refuses it
    (["nonsense"], "--set: expected KEY.PATH=VALUE"),
])
def test_errors_name_the_key_path(overrides, expected):
    assert expected in error(overrides)


def test_links_to_unknown_peers_and_self_links_are_rejected():
    msg = error(links={"overrides": [{"src": 0, "dst": 9, "bandwidth": "10mbit"}]})
    assert msg.startswith("links.overrides[0].dst: expected the id of a configured peer ([0, 1, 2]), got 9")
    assert "two different peers" in error(links={"overrides": [{"src": 1, "dst": 1}]})
    assert "topology.edges[1]: edge [1, 5] names 5" in error(topology={"kind": "edges", "edges": [[0, 1], [1, 5]]})


def test_top_level_shape_errors():
    with pytest.raises(ConfigError, match="expected a YAML mapping at the top level"):
        config.parse(["peers"])
    with pytest.raises(ConfigError, match="^peers: required key is missing"):
        config.parse({"training": {"max_iterations": 1}})
    with pytest.raises(ConfigError, match="^peers: expected a list of"):
        config.parse({"peers": {"id": 0}, "training": {"max_iterations": 1}})
    with pytest.raises(ConfigError, match="^training: expected a mapping"):
        parse(training=3)


def test_link_overrides_and_units():
    cfg = parse(links={"default": {"bandwidth": "100mbit", "latency": "5ms"},
                       "overrides": [{"src": 0, "dst": 1, "bandwidth": "10mbit"}]})
    assert cfg.link(0, 1).bandwidth == 1e7 and cfg.link(0, 1).latency == pytest.approx(0.005)
    assert cfg.link(1, 0).bandwidth == 1e8
    assert parse_bandwidth("1gbit") == 1e9 and parse_bandwidth("250kbit") == 2.5e5
    assert parse_bandwidth("1000bit") == 1000 and parse_bandwidth("1e3kbit") == 1e6
    assert parse_duration("25ms") == 0.025 and parse_duration("1.5s") == 1.5 and parse_duration("200us") == 0.0002
    assert parse_duration(0) == 0 and parse_duration("0") == 0  # zero is the same in every unit
    for bad in ("0mbit", "fast", "10mbps", True, 100, "100", "1e400gbit"):
        with pytest.raises(ValueError):
            parse_bandwidth(bad)
    with pytest.raises(ValueError):
        parse_duration("1e999ms")  # infinity: a link that never delivers


@pytest.mark.parametrize("overrides, sections, expected", [
    (["peers.0.latency=10"], {},
     "peers[0].latency: expected a duration with a unit such as 10ms, 1.5s or 200us; a bare number is ambiguous "
     "(10 what?)"),
    (["links.default.bandwidth=100"], {},
     "links.default.bandwidth: expected a bandwidth with a unit such as 50mbit, 1gbit or 100kbit; a bare number is "
     "ambiguous (100 what?)"),
    (["links.default.latency='2.5'"], {}, "links.default.latency: expected a duration with a unit"),  # quoted too
    (["peers.1.uplink=1e6"], {}, "peers[1].uplink: expected a bandwidth with a unit such as 50mbit, 1gbit or 100kbit; "
                                 "a bare number is ambiguous (1e+06 what?)"),
    ([], {"links": {"overrides": [{"src": 0, "dst": 1, "latency": 0.5}]}},
     "links.overrides[0].latency: expected a duration with a unit such as 10ms, 1.5s or 200us; a bare number is "
     "ambiguous (0.5 what?)"),
    ([], {"schedule": [{"at": 30, "peer": 0, "cores": 0.5}]},
     "schedule[0].at: expected a duration with a unit such as 10ms, 1.5s or 200us; a bare number is ambiguous "
     "(30 what?)"),
])
def test_a_bare_number_where_a_unit_belongs_is_refused_with_a_hint(overrides, sections, expected):
    assert error(overrides, **sections).startswith(expected)


@pytest.mark.parametrize("override, path", [
    ("training.learning_rate=.inf", "training.learning_rate"),
    ("rounds.learning_rate_scale=.inf", "rounds.learning_rate_scale"),
    ("rounds.final_average_timeout_s=.inf", "rounds.final_average_timeout_s"),
    ("evaluation.deadline_s=.inf", "evaluation.deadline_s"),
    ("training.max_seconds=-.inf", "training.max_seconds"),
    ("peers.0.cores=.inf", "peers[0].cores"),
    ("training.learning_rate=.nan", "training.learning_rate"),
    ("restart.backoff_s=.inf", "restart.backoff_s"),
    ("security.max_norm_ratio=.inf", "security.max_norm_ratio"),
])
def test_an_infinite_or_nan_number_is_refused_where_a_finite_one_belongs(override, path):
    assert error([override]).startswith(f"{path}: expected a ")


def test_a_huge_integer_is_checked_as_an_integer():
    assert parse(["training.max_iterations=1" + "0" * 400]).training.max_iterations == 10**400  # no OverflowError
    assert error(["training.max_iterations=-1" + "0" * 400]).startswith("training.max_iterations: expected a positive")


def _option_classes(cls, seen):
    """`cls` and every dataclass its fields hold (sections, list items), each once."""
    if cls in seen:
        return
    seen.add(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for tp in (hints[f.name], *typing.get_args(hints[f.name])):
            if dataclasses.is_dataclass(tp):
                _option_classes(tp, seen)


def test_no_number_option_anywhere_takes_infinity():
    """Every float option of the config, the strategies' parameters and the population refuses infinity, so an
    option added later with a bare `x > 0` check fails here."""
    classes = set()
    for root in (config.Config, population.Population,
                 *(strategy.Params for registry in config.STAGE_REGISTRIES.values() for strategy in registry.values())):
        _option_classes(root, classes)
    accepted = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if float not in (hints[f.name], *typing.get_args(hints[f.name])) or "expect" not in f.metadata:
                continue
            parse, check = f.metadata.get("parse"), f.metadata.get("check")
            try:
                value = parse("1e999" + ("s" if parse is parse_duration else "gbit")) if parse else math.inf
                if check is None or check(value):
                    accepted.append(f"{cls.__qualname__}.{f.name}")
            except ValueError:
                pass
    assert len(classes) > 10 and accepted == []


def test_a_zero_duration_needs_no_unit():
    assert parse(["links.default.latency=0"]).link(0, 1).latency == 0.0


def test_resolved_config_writes_units_and_reloads_to_the_same():
    cfg = parse(["peers.0.latency=200us", "peers.0.uplink=50mbit", "links.default.latency=1.5ms"],
                schedule=[{"at": "2.5s", "src": 0, "dst": 1, "bandwidth": "1.5gbit"}])
    resolved = config.to_dict(cfg)
    assert (resolved["peers"][0]["latency"], resolved["peers"][0]["uplink"]) == ("200us", "50mbit")
    assert resolved["links"]["default"] == {"bandwidth": "1gbit", "latency": "1.5ms"}
    assert resolved["schedule"][0]["at"] == "2.5s" and resolved["schedule"][0]["bandwidth"] == "1.5gbit"
    assert config.parse(resolved) == cfg


def test_access_links_take_the_smaller_end_and_add_latencies_then_overrides_win():
    cfg = parse(["peers.0.uplink=1gbit", "peers.0.downlink=1gbit", "peers.0.latency=1ms",
                 "peers.1.uplink=100mbit", "peers.1.downlink=50mbit", "peers.1.latency=5ms"],
                links={"overrides": [{"src": 1, "dst": 0, "latency": "40ms"}]})
    assert cfg.link(0, 1).bandwidth == 5e7 and cfg.link(0, 1).latency == pytest.approx(0.006)
    assert cfg.link(1, 0).bandwidth == 1e8 and cfg.link(1, 0).latency == pytest.approx(0.040)
    assert cfg.link(0, 2).bandwidth == 1e9 and cfg.link(0, 2).latency == pytest.approx(0.001)  # 2 has no access link


def test_schedule_changes_cores_and_links_from_their_time_on():
    cfg = parse(schedule=[{"at": "30s", "peer": 0, "cores": 0.2},
                          {"at": "30s", "src": 0, "dst": 1, "bandwidth": "10mbit"},
                          {"at": "40s", "peer": 0, "cores": 0.5}], emulation={"method": "fallback"})
    assert cfg.cores(0) == 1.0 and cfg.cores(0, at=29.9) == 1.0 and cfg.cores(0, at=30) == 0.2
    assert cfg.cores(0, at=45) == 0.5 and cfg.cores(1, at=45) == 1.0
    assert cfg.link(0, 1, at=10).bandwidth == 1e9 and cfg.link(0, 1, at=31).bandwidth == 1e7
    assert cfg.link(1, 0, at=31).bandwidth == 1e9


@pytest.mark.parametrize("change, expected", [
    ({"at": "5s", "peer": 0}, "schedule[0]: expected either {at, peer, cores} or {at, src, dst"),
    ({"at": "5s", "peer": 0, "cores": 0.5, "src": 1}, "schedule[0]: expected either"),
    ({"at": "5s", "src": 0, "dst": 1}, "schedule[0]: expected either"),
    ({"at": "5s", "peer": 8, "cores": 0.5}, "schedule[0].peer: expected the id of a configured peer"),
    ({"at": "5s", "src": 1, "dst": 1, "latency": "3ms"}, "schedule[0]: expected a link between two different peers"),
    ({"at": "soon", "peer": 0, "cores": 0.5}, "schedule[0].at: expected a time from the start of training"),
    ({"peer": 0, "cores": 0.5}, "schedule[0].at: required key is missing"),
])
def test_schedule_errors(change, expected):
    assert expected in error(schedule=[change])


def test_emulation_method_is_checked():
    assert "emulation.method: expected one of: none (run as the host allows), fallback (in-process" in \
        error(emulation={"method": "magic"})


def test_set_overrides_any_key_and_parses_yaml_scalars():
    cfg = parse(["training.max_seconds=30", "training.stop_at_target=false", "output.dir=/tmp/x",
                 "strategies.exchange.deadline_s=0.5", "peers.0.address=127.0.0.2"])
    assert cfg.training.max_seconds == 30.0 and cfg.training.stop_at_target is False
    assert cfg.output.dir == "/tmp/x" and cfg.strategies.exchange.params.deadline_s == 0.5
    assert cfg.peer(0).address == "127.0.0.2"


def test_topologies():
    assert parse(["topology.kind=ring"]).destinations(0) == (1, 2)
    cfg = parse(topology={"kind": "edges", "edges": [[0, 1], [1, 2], [2, 0]]})
    assert cfg.destinations(0) == (1,) and cfg.destinations(2) == (0,)
    # time-varying: the neighbours are every peer sent to in some round; the graph answers per round
    cfg = parse(topology={"kind": "one-peer-exponential"})
    assert cfg.destinations(0) == (1, 2) and cfg.graph().out_neighbours(0, 0) == (1,)
    cfg = parse(topology={"kind": "random-k-out", "k": 1, "seed": 4})
    assert all(len(cfg.graph().out_neighbours(p, r)) == 1 for p in (0, 1, 2) for r in range(20))
    cfg = parse(topology={"kind": "sequence", "sequence": [[[0, 1], [1, 2]], [[2, 0]]]})
    assert cfg.graph().out_neighbours(2, 0) == () and cfg.graph().out_neighbours(2, 3) == (0,)
    assert config.parse(config.to_dict(cfg)) == cfg


@pytest.mark.parametrize("topology,expected", [
    ({"kind": "edges", "edges": [[0, 1], [1, 0], [1, 2]]},
     "topology: edges is not strongly connected over its period of 1 round(s): peer 0 cannot be reached from "
     "peer(s) [2]"),
    ({"kind": "sequence", "sequence": [[[0, 1]], [[1, 0]]]},
     "topology: sequence is not strongly connected over its period of 2 round(s): peer(s) [2] cannot be reached "
     "from peer 0; peer 0 cannot be reached from peer(s) [2]"),
    ({"kind": "sequence", "sequence": [[[0, 1]], [[1, 7]]]}, "topology.sequence[1][0]: edge [1, 7] names 7"),
    ({"kind": "random-k-out", "k": 3}, "topology.k: expected an integer in 1..2"),
    ({"kind": "star"}, "topology.kind: expected a static graph, one of: ring, directed-ring, exponential, full"),
    ({"kind": "ring", "edges": [[0, 1]]}, "topology.edges: edges are only for kind edges, not ring"),
])
def test_topology_errors_name_the_key_and_the_unreachable_peers(topology, expected):
    assert error(topology=topology).startswith(expected)


def test_resolved_config_round_trips():
    cfg = parse(["links.default.bandwidth=50mbit", "strategies.exchange.deadline_s=1.5"])
    assert config.parse(config.to_dict(cfg)) == cfg


def test_load_reports_yaml_syntax_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("peers: [\n")
    with pytest.raises(ConfigError, match="expected valid YAML at line"):
        config.load(bad)
    with pytest.raises(ConfigError, match="expected a readable YAML file"):
        config.load(tmp_path / "missing.yaml")


def test_config_reference_doc_is_in_sync():
    from conftest import ROOT
    assert (ROOT / "docs" / "config.md").read_text() == config.reference_markdown(), \
        "docs/config.md is stale: run python3 scripts/gen_config_doc.py"


def test_a_yaml_boolean_where_a_strategy_kind_belongs_gets_a_hint():
    with pytest.raises(ConfigError, match=r"strategies.knowledge.kind: .*YAML reads unquoted off/on/no/yes"):
        config.parse({"peers": [{"id": 0, "port": 47000}], "training": {"max_iterations": 1}},
                     ["strategies.knowledge.kind=off"])


def test_presets_fill_in_strategies_and_the_config_wins_key_by_key():
    base = {"peers": [{"id": 0, "port": 47000}], "training": {"max_iterations": 1}, "preset": "dlion",
            "strategies": {"exchange": {"deadline_s": 9.0}, "knowledge": {"kind": "none"}}}
    cfg = config.parse(base)
    assert (cfg.strategies.batching.kind, cfg.strategies.exchange.kind, cfg.strategies.knowledge.kind) == \
        ("weighted", "prioritized", "none")
    assert cfg.strategies.exchange.params.deadline_s == 9.0
    assert config.parse(config.to_dict(cfg)) == cfg  # the resolved config reloads to the same


def test_gossip_presets_bring_their_graph_unless_the_config_has_one():
    base = {"peers": [{"id": i, "port": 47000 + i} for i in range(4)], "training": {"max_iterations": 1},
            "strategies": {"exchange": {"deadline_s": 9.0}}}
    sgp = config.parse({**base, "preset": "sgp"})
    assert (sgp.strategies.exchange.kind, sgp.strategies.gossip.kind, sgp.topology.kind) == \
        ("none", "push-sum", "one-peer-exponential")  # the exchange deadline has no exchange to tune: left out
    skew = config.parse({**base, "preset": "sparse-push-skew"})
    assert skew.strategies.gossip.kind == "sparse-push" and skew.strategies.gossip.params.skew_compensation == "logit-adjustment"
    full = config.parse({**base, "preset": "full", "topology": {"kind": "ring"}})
    assert full.topology.kind == "ring" and full.strategies.exchange.params.deadline_s == 9.0
    assert [getattr(full.strategies, s).kind for s in ("batching", "exchange", "gossip", "knowledge")] == \
        ["weighted", "prioritized", "sparse-push", "dkt"]
    bsp = config.parse({**base, "preset": "bsp"})
    assert bsp.topology.kind == "full" and bsp.strategies.gossip.kind == "none"
    full_skew = config.parse({**base, "preset": "full-skew", "rounds": {"local_steps": 8}})
    assert (full.rounds.update_weights, full_skew.rounds.update_weights) == ("batch", "uniform")
    assert full_skew.rounds.local_steps == 8 and full_skew.rounds.final_average  # full's rounds under the config's
    assert full_skew.strategies == config.parse({**base, "preset": "full"}).strategies


def test_rounds_default_to_one_step_and_a_preset_fills_in_its_own_under_the_configs():
    base = {"peers": [{"id": 0, "port": 47000}], "training": {"max_iterations": 1}}
    assert config.parse(base).rounds == config.Rounds(1, 1.0, 0.0, 8)
    assert config.parse({**base, "rounds": {"local_steps": 4, "outer_momentum": 0.9}}).rounds.local_steps == 4
    for bad, expected in [({"local_steps": 0}, "rounds.local_steps"), ({"outer_momentum": 1.0}, "rounds.outer_momentum"),
                          ({"steps": 2}, "rounds.steps")]:
        with pytest.raises(ConfigError, match=expected):
            config.parse({**base, "rounds": bad})


def test_full_brings_its_rounds_and_the_configs_keys_replace_them_one_by_one():
    base = {"peers": [{"id": 0, "port": 47000}], "training": {"max_iterations": 1}, "preset": "full"}
    assert config.parse(base).rounds.local_steps == 32
    own = config.parse({**base, "rounds": {"outer_momentum": 0.5}}).rounds
    assert own.local_steps == 32 and own.outer_momentum == 0.5
    assert config.parse({**base, "rounds": {"local_steps": 1}}).rounds.local_steps == 1
    assert config.parse({**base, "preset": "bsp"}).rounds.local_steps == 1
    assert config.parse(base).rounds.learning_rate_scale == 1.5
    assert config.parse({**base, "preset": "bsp"}).rounds.learning_rate_scale == 1.0
    with pytest.raises(ConfigError, match="rounds.learning_rate_scale"):
        config.parse({**base, "rounds": {"learning_rate_scale": 0}})


def test_local_sgd_is_dilocos_rule_on_the_dense_exchange():
    base = {"peers": [{"id": 0, "port": 47000}], "training": {"max_iterations": 1}, "preset": "local-sgd"}
    cfg = config.parse(base)
    assert cfg.rounds == config.Rounds(32, 0.7, 0.9, 8)
    assert (cfg.strategies.batching.kind, cfg.strategies.exchange.kind, cfg.strategies.gossip.kind) == \
        ("fixed", "dense", "none")
    assert config.parse({**base, "rounds": {"local_steps": 500}}).rounds.outer_momentum == 0.9


def test_gaia_and_ako_are_the_bsp_stages_with_their_exchange():
    base = {"peers": [{"id": 0, "port": 47000}], "training": {"max_iterations": 1}}
    for preset, steps in (("gaia", 4), ("ako", 1)):  # gaia weighs changes of parameters: rounds of local steps
        cfg = config.parse({**base, "preset": preset})
        assert (cfg.strategies.batching.kind, cfg.strategies.exchange.kind, cfg.strategies.gossip.kind,
                cfg.topology.kind, cfg.rounds.local_steps) == ("fixed", preset, "none", "full", steps)
    cfg = config.parse({**base, "preset": "ako", "strategies": {"exchange": {"partitions": 8}}})
    assert cfg.strategies.exchange.params.partitions == 8


def test_ad_psgd_gossips_pairwise_on_the_full_mesh_after_every_step():
    base = {"peers": [{"id": i, "port": 47000 + i} for i in range(4)], "training": {"max_iterations": 1},
            "preset": "ad-psgd"}
    cfg = config.parse(base)
    assert (cfg.strategies.batching.kind, cfg.strategies.exchange.kind, cfg.strategies.gossip.kind,
            cfg.strategies.knowledge.kind, cfg.topology.kind, cfg.rounds.local_steps) == \
        ("fixed", "none", "ad-psgd", "none", "full", 1)
    own = config.parse({**base, "strategies": {"gossip": {"timeout_s": 2.5}}, "topology": {"kind": "ring"}})
    assert own.strategies.gossip.params.timeout_s == 2.5 and own.strategies.gossip.params.mixing == 0.5
    assert own.topology.kind == "ring"
