"""Peer-to-peer messaging: the wire codec, the mailbox, and the ZeroMQ and in-process transports."""
from .inproc import InprocHub, InprocTransport
from .mailbox import Mailbox
from .stats import LinkStats
from .wire import KINDS, Message, Sparse, WireError, WireLimits, decode, encode
from .zmq import ZmqTransport

__all__ = ["Message", "Sparse", "WireError", "WireLimits", "KINDS", "encode", "decode", "Mailbox", "LinkStats",
           "ZmqTransport", "InprocHub", "InprocTransport"]
