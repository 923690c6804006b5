"""Replicas of each peer's state at other peers, so that a restarted peer gets its own state back (FTPipeHD's idea).

What: a peer's state vector is its parameters followed, with `replicas.optimizer`, by its optimizer's variables
(`trainer.optimizer_vector`), plus its push-sum weight in the metadata. Where: at its `copies` ring successors (the
next live peers after it in id order), which keep the latest replica of each peer that sends them one.

How, cheaply and behind the round's messages: the vector is cut into `chunks` slices and each round one slice goes
to each holder, so a whole replica costs one state per `chunks` rounds, sent after the round's exchange and gossip.
A slice goes as the float16 difference from what the holder has (the sender keeps that copy, so what float16 rounds
off is sent with the next difference), and every `refresh_every`-th time densely in float32, which repairs a slice
whose difference was lost on the way. Each message names the message its difference is against (`base`, 0: none);
a holder whose slice is not at that base leaves it invalid until the next dense one, so a lost message never turns
into a wrong replica, only a stale slice. A new link epoch (a restarted sender, or a holder that came back) starts
every slice densely.

Recovering: a restarted peer asks every live peer what replica of its state it holds (`replica-request`); each that
holds one whose every slice is valid offers it (`replica-offer`: the round of its oldest slice, and the weight), and
sends it on request (`replica-state`: parameters and optimizer variables; the latter left out where the message
would be larger than a message may be). Offers first, so that a slow downlink carries one whole state, not one per
holder besides the leading peer's. `dlion.rejoin` takes the freshest of the offered replica, the peer's own
checkpoint and the leading peer's state, and the replica's push-sum weight in any case: it is this peer's own, so the
total weight of the system is restored along with it (up to what it moved since the replica was sent).
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from dlion import messages
from dlion.compression import fits_half

REPLICA, REQUEST = messages.REPLICA, messages.REPLICA_REQUEST
OFFER, STATE = messages.REPLICA_OFFER, messages.REPLICA_STATE


def holders(peer_id: int, peer_ids, copies: int, departed=frozenset()) -> list[int]:
    """The `copies` live peers after `peer_id` in id order (wrapping): where its replicas go."""
    ring = sorted(peer_ids)
    at = ring.index(peer_id)
    after = [ring[(at + k) % len(ring)] for k in range(1, len(ring))]
    return [p for p in after if p not in departed][:copies]


def slice_of(size: int, chunks: int, index: int) -> slice:
    """Slice `index` of the `chunks` contiguous slices of a vector of `size` entries (the last ones may be empty)."""
    step = math.ceil(size / chunks)
    return slice(min(index * step, size), min((index + 1) * step, size))


@dataclass
class _Outgoing:
    """The sender's side of one holder's link: its epoch, the copy the holder has, and messages so far."""

    epoch: int
    copy: np.ndarray
    last: np.ndarray  # per slice: the sequence number of the message that last set it
    passes: np.ndarray  # per slice: how many times it was sent
    seq: int = 0


@dataclass
class _Held:
    """A holder's copy of one peer's state: per slice the sequence number it is at (-1: invalid) and its round."""

    epoch: int
    state: np.ndarray
    seq: np.ndarray
    at: np.ndarray
    params: int  # the state's first entries that are parameters (the rest: optimizer variables)
    weight: float = 1.0

    def complete(self) -> bool:
        return bool((self.seq > 0).all())


class Replicas:
    """One peer's replicas: the slices it sends its holders, the copies it holds of others, the answers to requests."""

    def __init__(self, settings, ctx, trainer, on: bool = True):
        """`settings`: the config's `replicas` block; `trainer`: whose parameters (and optimizer variables) the
        state is; `on` False: no replicas (a peer that trains alone), whatever the settings say."""
        self.settings = settings
        self.on = on and settings.copies > 0 and len(ctx.peer_ids) > 1
        self.ctx, self.transport = ctx, ctx.transport
        self.trainer = trainer
        self._epochs = itertools.count(time.time_ns() // 1000)  # newer than any earlier process of ours
        self._out: dict[int, _Outgoing] = {}
        self._held: dict[int, _Held] = {}
        self._size: int | None = None
        self._seen: dict[int, object] = {}  # peer -> its last request answered (by identity: each is answered once)

    def step(self, round_: int, weight: float) -> None:
        """Once a round, after its exchange and gossip: file the slices that came, answer requests, send this
        round's slice (with the push-sum weight `weight`) to the holders."""
        if not self.on:
            return
        self.receive(round_)
        self.answer(round_)
        size, chunks = self._state_size(), self.settings.chunks
        index = round_ % chunks
        part = slice_of(size, chunks, index)
        current = self._current(part)
        departed = self.transport.mailbox.departed
        for dst in list(self._out):
            if dst in departed:  # when it is back, its copy may be gone: start again densely, in a new epoch
                del self._out[dst]
        for dst in holders(self.ctx.peer_id, self.ctx.peer_ids, self.settings.copies, departed):
            link = self._out.get(dst)
            if link is None:
                link = self._out[dst] = _Outgoing(next(self._epochs), np.zeros(size, np.float32),
                                                  np.zeros(chunks, np.int64), np.zeros(chunks, np.int64))
            self._send_slice(dst, link, current, part, index, round_, {"p": self.trainer.num_state, "w": float(weight)})

    def _current(self, part: slice) -> np.ndarray:
        """The entries `part` of this peer's state vector now, copied out of the model only from the pieces (its
        variables, its optimizer's) that the slice covers: a round sends one slice, a small peer pays every copy."""
        params = self.trainer.num_state
        pieces = []
        if part.start < params:
            pieces.append(self.trainer.get_params()[part.start:min(part.stop, params)])
        if part.stop > params:
            pieces.append(self.trainer.optimizer_vector()[max(part.start - params, 0):part.stop - params])
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)  # the last slices may be empty

    def _send_slice(self, dst: int, link: _Outgoing, current: np.ndarray, part: slice, index: int, round_: int,
                    meta: dict) -> None:
        """Send `current`, the entries `part` of the state, to a holder: densely or as the difference from its copy."""
        diff = current - link.copy[part]
        dense = link.passes[index] % self.settings.refresh_every == 0 or not fits_half(diff)
        link.seq += 1
        if dense:
            values, base = current.copy(), 0
            link.copy[part] = values
        else:
            values, base = diff.astype(np.float16), int(link.last[index])
            link.copy[part] += values.astype(np.float32)
        self.transport.send(dst, REPLICA, round_, {"d": values},
                            {"e": link.epoch, "n": link.seq, "base": base, "i": index, "of": self.settings.chunks,
                             "size": link.copy.size, **meta})
        link.last[index], link.passes[index] = link.seq, link.passes[index] + 1

    def receive(self, round_: int) -> None:
        """File every replica slice that came since the last call (`round_`: this peer's, for the mailbox window)."""
        for sender, msgs in sorted(self.transport.mailbox.drain(REPLICA, round_).items()):
            for msg in msgs:
                self._file(msg)

    def _file(self, msg) -> None:
        meta, values = msg.meta, msg.tensors["d"]
        size, chunks, index = meta["size"], meta["of"], meta["i"]
        own = self._state_size()
        if size != own or index >= chunks or chunks > size or meta["p"] > size:
            self.transport.reject(msg, "shape", f"a slice {index} of {chunks} of a state of {size} entries; this "
                                                f"peer's state has {own}")
            return
        part = slice_of(size, chunks, index)
        if not isinstance(values, np.ndarray) or values.shape != (part.stop - part.start,) or \
                values.dtype not in (np.float16, np.float32) or (meta["base"] == 0) != (values.dtype == np.float32):
            self.transport.reject(msg, "shape", f"expected {part.stop - part.start} values of slice {index}: float32 "
                                                f"when dense, float16 when a difference")
            return
        held = self._held.get(msg.sender)
        if held is None or meta["e"] > held.epoch or (held.seq.size, held.state.size, held.params) != (
                chunks, size, meta["p"]):
            held = self._held[msg.sender] = _Held(meta["e"], np.zeros(size, np.float32), np.full(chunks, -1, np.int64),
                                                  np.zeros(chunks, np.int64), meta["p"])
        elif meta["e"] < held.epoch:
            self.transport.reject(msg, "old epoch", f"epoch {meta['e']} is older than the replica's {held.epoch}")
            return
        if meta["base"] == 0:
            held.state[part] = values
        elif held.seq[index] == meta["base"]:
            held.state[part] += values.astype(np.float32)
        else:  # its base never reached us: stale until the next dense one
            held.seq[index] = -1
            return
        held.seq[index], held.at[index], held.weight = meta["n"], msg.round, meta["w"]

    def answer(self, round_: int) -> None:
        """Answer every new replica request: with an offer (the round of the replica's oldest slice, its weight) if
        the replica held of its sender is complete, or, asked for the whole, with the replica itself."""
        for p in self.ctx.others:
            msg = self.transport.mailbox.latest(REQUEST, p)
            if msg is None or self._seen.get(p) is msg:
                continue
            self._seen[p] = msg
            self.receive(round_)
            held = self._held.get(p)
            if held is None or not held.complete():
                continue
            meta = {"at": int(held.at.min()), "w": held.weight}
            if not msg.meta["whole"]:
                self.transport.send(p, OFFER, msg.round, None, meta)
                continue
            params, optimizer = held.state[:held.params].copy(), held.state[held.params:].copy()
            try:
                self.transport.send(p, STATE, msg.round, {"p": params, "o": optimizer}, meta)
            except ValueError:  # larger than a message may be: the parameters alone
                self.transport.send(p, STATE, msg.round, {"p": params, "o": optimizer[:0]}, meta)

    def _state_size(self) -> int:
        """Entries in this peer's state vector (the same model and optimizer as every peer's: a replica of another
        size is not a replica of a peer of this run)."""
        if self._size is None:
            optimizer = self.trainer.optimizer_vector().size if self.settings.optimizer else 0
            self._size = self.trainer.num_state + optimizer
        return self._size

    def ask(self, round_: int) -> list[int]:
        """Ask every live peer what replica of this peer's state it holds (a restarted peer, before it takes part
        again); returns whom. Those holding a complete one answer with an offer."""
        asked = self.ctx.live(self.ctx.others) if self.on else []
        for p in asked:
            self.transport.send(p, REQUEST, round_, None, {"whole": 0})
        return asked

    def fetch(self, holder: int, round_: int) -> None:
        """Ask `holder` for the replica it offered (answered with a `replica-state` of round `round_`)."""
        self.transport.send(holder, REQUEST, round_, None, {"whole": 1})
