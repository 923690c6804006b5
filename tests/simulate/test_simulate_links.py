"""Simulated links: a message's arrival time from its link's rate and latency, behind what its queue holds."""
import pytest

from dlion.config import parse
from dlion.simulate.links import SimLinks


def config(**extra):
    raw = {"peers": [{"id": i, "port": 47500 + i} for i in range(3)],
           "links": {"default": {"bandwidth": "8mbit", "latency": "20ms"}}, "training": {"max_iterations": 1}}
    raw.update(extra)
    return parse(raw)


def test_a_message_arrives_its_bytes_over_the_rate_plus_the_latency_after_it_was_sent():
    links = SimLinks(config())
    assert links.arrival(0, 1, 100_000, sent=3.0) == pytest.approx(3.0 + 8 * 100_000 / 8e6 + 0.020)


def test_a_second_message_queues_behind_the_first_on_its_link():
    links = SimLinks(config())
    first = links.arrival(0, 1, 100_000, sent=0.0)    # on the wire 0.0 .. 0.1 s
    second = links.arrival(0, 1, 50_000, sent=0.04)   # waits until 0.1, then 0.05 s
    assert first == pytest.approx(0.1 + 0.02)
    assert second == pytest.approx(0.1 + 0.05 + 0.02)
    later = links.arrival(0, 1, 50_000, sent=1.0)     # the link is idle again: no queueing
    assert later == pytest.approx(1.0 + 0.05 + 0.02)


def test_links_queue_apart_by_default_and_share_the_senders_uplink_on_request():
    apart, shared = SimLinks(config()), SimLinks(config(), queue="uplink")
    for links in (apart, shared):
        links.arrival(0, 1, 100_000, sent=0.0)
    assert apart.arrival(0, 2, 100_000, sent=0.0) == pytest.approx(0.12)  # its own link: free
    assert shared.arrival(0, 2, 100_000, sent=0.0) == pytest.approx(0.22)  # behind the message to peer 1
    assert shared.arrival(1, 2, 100_000, sent=0.0) == pytest.approx(0.12)  # another sender's uplink is its own
    with pytest.raises(ValueError):
        SimLinks(config(), queue="wifi")


def test_access_links_and_scheduled_changes_set_the_rate_and_latency_at_the_time_of_sending():
    cfg = config(peers=[{"id": 0, "port": 47500, "uplink": "10mbit", "latency": "5ms"},
                        {"id": 1, "port": 47501, "downlink": "4mbit", "latency": "15ms"}],
                 schedule=[{"at": "10s", "src": 0, "dst": 1, "bandwidth": "1mbit"}])
    links = SimLinks(cfg)
    assert links.spec(0, 1, at=0.0) == (4e6, pytest.approx(0.020))  # the smaller rate, the latencies summed
    assert links.arrival(0, 1, 10_000, sent=0.0) == pytest.approx(8 * 10_000 / 4e6 + 0.020)
    assert links.arrival(0, 1, 10_000, sent=20.0) == pytest.approx(20.0 + 8 * 10_000 / 1e6 + 0.020)
