from dlion.batching import FixedBatching, split_evenly


def test_split_evenly_sums_to_the_total_with_remainder_to_lowest_ids():
    assert split_evenly(10, [2, 0, 1]) == {0: 4, 1: 3, 2: 3}
    assert sum(split_evenly(97, range(5)).values()) == 97


def test_fixed_batching_gives_each_peer_its_share():
    sizes = [FixedBatching(FixedBatching.Params(), p, [0, 1, 2], 96).batch_size(7) for p in (0, 1, 2)]
    assert sizes == [32, 32, 32]
