"""Helpers for the selective exchanges' tests (Gaia, Ako): one exchange per peer on in-process transports, a round
run by every peer at once, and a record of the gradient messages a peer sends."""
from conftest import in_threads, stage_context

PEERS = (0, 1, 2)


def exchanges(cls, transports, graph=None, models=None, **params):
    """{peer: cls(cls.Params(**params), its context)}, each peer with its `models` entry as ModelAccess (or none)."""
    p = cls.Params(**params)
    return {i: cls(p, stage_context(transports, i, graph, model=(models or {}).get(i))) for i in PEERS}


def run_round(ex, round_, grads, weights):
    return in_threads(lambda p: ex[p].exchange(round_, grads[p], weights[p], 0.01), PEERS)


def record_grads(monkeypatch, transport):
    """The gradient messages `transport` sends from now on, as (destination, round, tensor 'g') in order."""
    sent = []
    send = transport.send

    def recording(dst, kind, round_, tensors=None, meta=None):
        if kind == "grad":
            sent.append((dst, round_, tensors["g"]))
        send(dst, kind, round_, tensors, meta)

    monkeypatch.setattr(transport, "send", recording)
    return sent
