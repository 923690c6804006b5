"""Emulated links: the serialization-queue math of one link, and the link policy that holds messages per destination."""
import math

import pytest

from dlion.emulate.links import LinkShaper, ShapedLinks

MBIT = 1e6


def test_one_message_takes_its_bytes_at_the_rate_plus_latency():
    s = LinkShaper(8 * MBIT, 0.02)
    assert s.release_at(100_000, now=10.0) == pytest.approx(10.0 + 0.1 + 0.02)


def test_back_to_back_messages_queue_and_latency_is_added_once():
    s = LinkShaper(8 * MBIT, 0.02)
    releases = [s.release_at(100_000, now=0.0) for _ in range(10)]
    assert releases == pytest.approx([0.1 * (i + 1) + 0.02 for i in range(10)])


def test_an_idle_link_does_not_bank_credit():
    s = LinkShaper(8 * MBIT, 0.0)
    s.release_at(100_000, now=0.0)
    assert s.release_at(100_000, now=5.0) == pytest.approx(5.1)


def test_a_rate_change_applies_to_later_messages_only():
    s = LinkShaper(8 * MBIT, 0.01)
    first = s.release_at(100_000, now=0.0)
    s.set(bandwidth_bps=80 * MBIT)
    assert first == pytest.approx(0.11)
    assert s.release_at(100_000, now=0.0) == pytest.approx(0.1 + 0.01 + 0.01)  # queued behind the first
    assert (s.bandwidth_bps, s.latency_s) == (80 * MBIT, 0.01)


def test_a_latency_cut_never_reorders_the_link():
    s = LinkShaper(8 * MBIT, 0.5)
    first = s.release_at(1_000, now=0.0)
    s.set(latency_s=0.0)
    assert s.release_at(1_000, now=0.0) == first
    assert s.release_at(1_000, now=1.0) == pytest.approx(1.001)


def test_zero_size_messages_only_see_latency_and_the_queue():
    s = LinkShaper(8 * MBIT, 0.02)
    assert s.release_at(0, now=1.0) == pytest.approx(1.02)
    s.release_at(100_000, now=1.0)
    assert s.release_at(0, now=1.0) == pytest.approx(1.12)


def test_unlimited_rate_and_bad_values():
    assert LinkShaper(math.inf, 0.02).release_at(10**9, now=1.0) == pytest.approx(1.02)
    for bad in [dict(bandwidth_bps=0), dict(bandwidth_bps=-1), dict(bandwidth_bps=math.nan),
                dict(latency_s=-0.1), dict(latency_s=math.inf)]:
        with pytest.raises(ValueError):
            LinkShaper(8 * MBIT, 0.0).set(**bad)


def test_shaped_links_validate_report_and_leave_other_links_alone():
    links = ShapedLinks()
    with pytest.raises(ValueError):
        links.set(1, -1, 0.0)
    assert links.shaped() == {} and links.release_at(1, 1000, 5.0) is None
    links.set(1, None, 0.02)
    assert links.shaped() == {1: (math.inf, 0.02)}
    links.set(1, 8 * MBIT, None)
    assert links.shaped() == {1: (8 * MBIT, 0.02)}
    assert links.release_at(1, 100_000, 5.0) == pytest.approx(5.12) and links.release_at(2, 100_000, 5.0) is None
