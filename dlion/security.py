"""Link keys: each peer's CURVE key pair, where it lives on disk, and which keys a peer accepts.

With `security.mode: curve` (the default) every link is encrypted and authenticated by ZeroMQ's CURVE: a peer's
ROUTER accepts a connection only from a key in its allow-list (the configured peers' public keys), and the
transport binds every message's sender to the key that authenticated its connection, so a peer can speak only as
itself. Keys are files in a keys directory, as ZeroMQ's own tools write them (`zmq.auth`): `peer-<id>.key` holds
the public key, `peer-<id>.key_secret` the pair; a config may also give a peer's public key inline
(`peers[i].public_key`, Z85), which is what a site needs from the others when it holds only its own pair.

`dlion keys CONFIG` writes every peer's pair (`--peer N`: one site's); `dlion run`, which starts every peer itself,
makes fresh pairs for the run when the config names no keys directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85

Z85_KEY_CHARS = 40  # a 32-byte CURVE key in Z85


class KeysError(ValueError):
    """A key that is missing or unreadable; the message says which file and what to do."""


def is_z85_key(text) -> bool:
    """Whether `text` is a CURVE key in Z85 (40 characters that decode to 32 bytes)."""
    if not isinstance(text, str) or len(text) != Z85_KEY_CHARS:
        return False
    try:
        return len(zmq.utils.z85.decode(text)) == 32
    except (ValueError, KeyError, AssertionError, TypeError):
        return False


def public_path(keys_dir: str | Path, peer_id: int) -> Path:
    return Path(keys_dir) / f"peer-{peer_id}.key"


def secret_path(keys_dir: str | Path, peer_id: int) -> Path:
    return Path(keys_dir) / f"peer-{peer_id}.key_secret"


def generate(keys_dir: str | Path, peer_ids, overwrite: bool = False) -> list[Path]:
    """Write a fresh key pair for each of `peer_ids` into `keys_dir` (secret files 0600); keeps existing pairs
    unless `overwrite`. Returns the files written."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for peer_id in peer_ids:
        if secret_path(keys_dir, peer_id).exists() and not overwrite:
            continue
        public, secret = zmq.auth.create_certificates(str(keys_dir), f"peer-{peer_id}")
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written


@dataclass(frozen=True)
class PeerKeys:
    """What one peer's transport needs: its own pair, and every peer's public key (Z85 bytes), by peer id."""

    public: bytes
    secret: bytes
    peers: dict[int, bytes]

    def peer_of(self, public_key: bytes) -> int | None:
        """The peer id a public key belongs to, or None if it is no configured peer's."""
        for peer_id, key in self.peers.items():
            if key == public_key:
                return peer_id
        return None


def _read(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeysError(f"cannot read {'key pair' if secret else 'public key'} {path}: {exc}") from None
    if secret and secret_key is None:
        raise KeysError(f"{path} holds no secret key")
    return public, secret_key


def load(cfg, peer_id: int) -> PeerKeys:
    """The keys of peer `peer_id` under `cfg.security`: its pair from the keys directory, every peer's public key
    from the config (`peers[i].public_key`) or else the keys directory. Raises KeysError naming what is missing."""
    keys_dir = cfg.security.keys_dir
    hint = ("make them with `dlion keys CONFIG` and set security.keys_dir, or set security.mode: none to run "
            "without authentication")
    if keys_dir is None:
        raise KeysError(f"security.mode is curve but security.keys_dir is not set: {hint}")
    own = secret_path(keys_dir, peer_id)
    if not own.exists():
        raise KeysError(f"peer {peer_id}'s key pair {own} does not exist: {hint}")
    public, secret = _read(own, secret=True)
    peers = {}
    for spec in cfg.peers:
        if spec.public_key is not None:
            peers[spec.id] = spec.public_key.encode("ascii")
        elif (path := public_path(keys_dir, spec.id)).exists():
            peers[spec.id] = _read(path, secret=False)[0]
        else:
            raise KeysError(f"no public key for peer {spec.id}: neither peers[].public_key nor {path}; {hint}")
    if peers[peer_id] != public:
        raise KeysError(f"peer {peer_id}'s configured public key does not match its key pair {own}")
    return PeerKeys(public, secret, peers)
