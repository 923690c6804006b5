"""The classifier refit: class statistics, their combination and checks, the refit, and the end-of-training exchange
across in-process peers with a stand-in trainer (features are the inputs themselves; no TF)."""
import numpy as np
import pytest

from conftest import in_threads, stage_context
from dlion import classifier, messages
from dlion.classifier import (ClassifierRefit, ClassStats, combine, counts_problem, draw, label_skew, problem, refit,
                              summarise)

D, CLASSES = 6, 4
MEANS = 3.0 * np.eye(CLASSES, D)  # well apart, but overlapping under unit noise


def samples(counts, seed):
    """Gaussian features around MEANS: counts[c] of class c."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    return MEANS[y] + rng.standard_normal((len(y), D)), y


def balanced_accuracy(kernel, bias, seed=99):
    x, y = samples([2000] * CLASSES, seed)
    return float(((x @ kernel + bias).argmax(axis=1) == y).mean())


def skewed_layer():
    """A last layer that leans hard towards class 0: what training on class-0-heavy data leaves."""
    kernel = MEANS.T.copy()
    return kernel, np.array([8.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("full", [True, False])
def test_statistics_travel_as_tensors_and_come_back_whole(full):
    x, y = samples([50, 30, 0, 20], seed=1)
    stats = summarise(x, y, full)
    tensors = stats.tensors()
    assert tensors["s"].shape == ((3, D * (D + 1) // 2) if full else (3, D))
    back = ClassStats.from_tensors(tensors, full)
    np.testing.assert_array_equal(back.classes, stats.classes)
    np.testing.assert_allclose(back.covariances, stats.covariances, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("full", [True, False])
def test_combined_statistics_are_those_of_the_union(full):
    x, y = samples([50, 30, 0, 20], seed=1)
    x2, y2 = samples([5, 40, 25, 0], seed=2)
    together = summarise(np.concatenate([x, x2]), np.concatenate([y, y2]), full)
    combined = combine([summarise(x, y, full), summarise(x2, y2, full)])
    np.testing.assert_array_equal(combined.classes, [0, 1, 2, 3])
    np.testing.assert_allclose(combined.counts, together.counts)
    np.testing.assert_allclose(combined.means, together.means)
    np.testing.assert_allclose(combined.covariances, together.covariances, atol=1e-12)
    assert combined.full == full


def test_drawn_features_follow_each_class_gaussian_even_with_a_rounded_covariance():
    x, y = samples([4000, 4000, 0, 0], seed=3)
    stats = summarise(x, y, full=True)
    direction = np.arange(1.0, D + 1)
    rank_one = np.outer(direction, direction) - 1e-9 * np.eye(D)  # rounding left eigenvalues just below zero
    stats = ClassStats(stats.classes, stats.counts, stats.means, np.stack([rank_one, stats.covariances[1]]))
    drawn, labels = draw(stats, 5000, np.random.default_rng(0))
    assert drawn.shape == (10000, D) and sorted(set(labels)) == [0, 1] and np.isfinite(drawn).all()
    np.testing.assert_allclose(drawn[labels == 1].mean(axis=0), MEANS[1], atol=0.1)
    np.testing.assert_allclose(np.cov(drawn[labels == 1].T), np.eye(D), atol=0.15)
    along = (drawn[labels == 0] - stats.means[0]) / direction  # class 0 varies along `direction` only
    np.testing.assert_allclose(along, along[:, :1].repeat(D, axis=1), atol=1e-3)


def test_the_refit_undoes_a_skewed_layer_from_statistics_alone():
    kernel, bias = skewed_layer()
    before = balanced_accuracy(kernel, bias)
    x, y = samples([300, 300, 300, 300], seed=4)
    features, labels = draw(summarise(x, y, full=True), classifier.VIRTUAL_PER_CLASS, np.random.default_rng(1))
    after = balanced_accuracy(*refit(kernel, bias, features, labels, seed=0))
    bayes = balanced_accuracy(MEANS.T, -0.5 * (MEANS ** 2).sum(axis=1))  # equal priors, unit covariance
    assert before < 0.7 < bayes
    assert after > bayes - 0.02


def own_stats():
    x, y = samples([100, 100, 0, 0], seed=5)
    return summarise(x, y, full=True)


def honest():
    return own_stats().tensors()


def spread_of(cov):
    """The "s" tensor of two classes with this covariance each."""
    own = own_stats()
    return ClassStats(own.classes, own.counts, own.means, np.stack([cov] * 2)).tensors()["s"]


def hostile(**changes):
    tensors = honest()
    tensors.update(changes)
    return tensors


@pytest.mark.parametrize("tensors, reason", [
    (hostile(c=np.array([0, 0])), "classes"),
    (hostile(c=np.array([0, 4])), "classes"),
    (hostile(c=np.array([-1, 1])), "classes"),
    (hostile(n=np.array([100, 10_000])), "counts"),
    (hostile(n=np.array([0, 100])), "counts"),
    (hostile(m=np.zeros((2, D + 1), np.float32)), "shape"),
    (hostile(s=np.zeros((2, D), np.float32)), "shape"),  # variances where this peer sends full covariances
    (hostile(c=np.array([0.0, 1.0])), "shape"),
    (hostile(m=np.full((2, D), 1e3, np.float32)), "norm"),
    (hostile(s=spread_of(1e4 * np.eye(D))), "norm"),
    (hostile(s=spread_of(-np.eye(D))), "covariance"),
])
def test_received_statistics_out_of_shape_range_or_scale_are_refused(tensors, reason):
    assert problem(honest(), own_stats(), CLASSES, max_count=300, ratio=10.0) is None
    assert problem(tensors, own_stats(), CLASSES, max_count=300, ratio=10.0)[0] == reason


class StandInTrainer:
    """The trainer calls the refit makes: the features are the inputs; the last layer is a (kernel, bias) pair."""

    num_params = 10_000

    def __init__(self):
        self.kernel, self.bias = skewed_layer()

    def features(self, x):
        return np.asarray(x, np.float32)

    def classifier(self):
        return self.kernel.copy(), self.bias.copy()

    def set_classifier(self, kernel, bias):
        self.kernel, self.bias = kernel, bias


PEERS = (0, 1, 2)
HOLDINGS = {0: [900, 40, 0, 0], 1: [0, 30, 700, 0], 2: [20, 0, 0, 600]}  # two classes each, mostly one
IID = {p: [150, 150, 150, 150] for p in PEERS}


def test_label_skew_is_the_largest_total_variation_from_the_union():
    assert label_skew([np.array([10, 10]), np.array([20, 20])]) == 0.0
    assert label_skew([np.array([10, 0]), np.array([0, 10])]) == pytest.approx(0.5)
    assert label_skew([np.array(h) for h in HOLDINGS.values()]) > 0.5
    rng = np.random.default_rng(0)  # an IID split of 60,000 labels over 4 peers: far below the threshold
    labels = rng.integers(0, 10, 60_000)
    iid = [np.bincount(part, minlength=10) for part in np.array_split(labels, 4)]
    assert label_skew(iid) < classifier.SKEW_THRESHOLD / 5


def test_no_claimed_label_counts_hide_a_skew_between_honest_peers():
    """Honest peers whose label distributions are 2 x threshold apart (total variation) refit whatever a hostile
    peer claims: by the triangle inequality one of them is at least half that distance from any union."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        honest = [np.round(rng.dirichlet(np.full(CLASSES, 0.3)) * rng.integers(100, 10_000)).astype(np.int64) + 1
                  for _ in range(3)]
        shares = [h / h.sum() for h in honest]
        if max(0.5 * np.abs(a - b).sum() for a in shares for b in shares) < 2 * classifier.SKEW_THRESHOLD:
            continue
        mean = np.mean(shares, axis=0)
        for claim in [*shares, mean, np.ones(CLASSES), rng.dirichlet(np.ones(CLASSES))]:
            for scale in (1, 1e3, 1e9):  # from a peer's size to one that drowns the others
                counts = np.round(claim / claim.sum() * scale * 1e4).astype(np.int64)
                assert label_skew(honest + [counts]) >= classifier.SKEW_THRESHOLD * 0.999


@pytest.mark.parametrize("counts", [np.zeros(CLASSES, np.int64), np.array([1, 2, 3]), np.array([1, -1, 0, 0]),
                                    np.array([1.0, 0.0, 0.0, 0.0])])
def test_label_counts_of_another_shape_or_sign_are_refused(counts):
    assert counts_problem(np.array([5, 0, 0, 1]), CLASSES) is None
    assert counts_problem(counts, CLASSES)[0] == "counts"


def refits(inproc, peers=PEERS, timeout_s=5.0, holdings=HOLDINGS, always=False):
    transports = inproc(PEERS)
    trainers = {p: StandInTrainer() for p in PEERS}
    stages = {}
    for p in peers:
        x, y = samples(holdings[p], seed=10 + p)
        stages[p] = ClassifierRefit(stage_context(transports, p), trainers[p], x, y, np.arange(len(y)), CLASSES,
                                    timeout_s, seed=7, always=always)
    return transports, trainers, stages


def test_every_peer_ends_with_the_same_balanced_layer(inproc):
    transports, trainers, stages = refits(inproc)
    before = balanced_accuracy(*trainers[0].classifier())
    events = in_threads(lambda p: stages[p].run(20), PEERS)
    after = balanced_accuracy(*trainers[0].classifier())
    assert before < 0.7 and after > 0.85
    for p in PEERS:
        np.testing.assert_allclose(trainers[p].kernel, trainers[0].kernel, atol=1e-5)
        np.testing.assert_allclose(trainers[p].bias, trainers[0].bias, atol=1e-5)
        assert events[p]["refitted"] and events[p]["skew"] > 0.5
        assert sorted(events[p]["peers"]) == [q for q in PEERS if q != p]
        assert events[p]["classes"] == [0, 1, 2, 3] and events[p]["covariance"] == "full"
    # at most SAMPLES_PER_CLASS per class summarised, whatever a peer holds
    assert stages[0].y.tolist().count(0) == classifier.SAMPLES_PER_CLASS


@pytest.mark.parametrize("always", [False, True])
def test_on_labels_spread_alike_the_layer_stays_unless_always(inproc, always):
    transports, trainers, stages = refits(inproc, holdings=IID, always=always)
    events = in_threads(lambda p: stages[p].run(20), PEERS)
    for p in PEERS:
        assert events[p]["skew"] < classifier.SKEW_THRESHOLD and events[p]["refitted"] == always
        assert (trainers[p].bias[0] != skewed_layer()[1][0]) == always
        assert (messages.CLASS_STATS in transports[p].bytes_by_kind()) == always


def test_a_departed_peer_is_not_waited_for_and_its_classes_are_missing(inproc):
    transports, trainers, stages = refits(inproc, peers=(0, 1), timeout_s=0.5)
    transports[2].close()  # said bye
    events = in_threads(lambda p: stages[p].run(20), (0, 1))
    assert events[0]["peers"] == [1] and events[0]["wait_s"] < 0.5
    assert events[0]["classes"] == [0, 1, 2]


def test_hostile_counts_and_statistics_are_dropped_and_counted_and_the_rest_used(inproc):
    transports, trainers, stages = refits(inproc, peers=(0,), timeout_s=1.0)
    transports[1].send(0, messages.LABEL_COUNTS, 20, {"h": np.array(HOLDINGS[1])})
    transports[2].send(0, messages.LABEL_COUNTS, 20, {"h": np.array([-5, 0, 0, 600])})
    x, y = samples([0, 30, 300, 0], seed=11)  # as peer 1 sends: at most SAMPLES_PER_CLASS of a class
    transports[1].send(0, messages.CLASS_STATS, 20, summarise(x, y, full=True).tensors())
    poison = summarise(*samples([20, 0, 0, 300], seed=12), full=True).tensors()
    poison["m"] = poison["m"] * 1e4
    transports[2].send(0, messages.CLASS_STATS, 20, poison)
    event = stages[0].run(20)
    assert event["refitted"] and event["peers"] == [1] and event["classes"] == [0, 1, 2]
    assert transports[0].rejections()[messages.LABEL_COUNTS] == {"counts": 1}
    assert transports[0].rejections()[messages.CLASS_STATS] == {"norm": 1}
    assert np.isfinite(trainers[0].kernel).all()


def test_statistics_too_large_for_a_model_go_as_variances(inproc):
    transports, trainers, stages = refits(inproc, peers=(0,), timeout_s=0.1, always=True)
    trainers[0].num_params = CLASSES * D * D - 1  # full covariances would cost more than one model
    event = stages[0].run(3)
    assert event["refitted"] and event["covariance"] == "diagonal" and event["peers"] == []
