"""Per-link counters, so a run can tell a slow link from a lossy one from a hostile one."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LinkStats:
    """Counters for one link. `msgs_received`/`bytes_received` count everything that arrived on the link;
    `dropped` (failed validation) and `late` (discarded by the mailbox) are subsets of it. `msgs_sent`/`bytes_sent`
    count messages handed to the link, `send_failed` those it refused (down or congested). `refused` counts connections
whose key is no peer's (CURVE; on the link "unknown"); `disconnects` the times a connection to the peer dropped or
stopped answering heartbeats. `bundles_sent` counts the messages handed over that carried a round's held messages
(`outbox`): one per link and round, when the round's messages leave together."""

    msgs_sent: int = 0
    bytes_sent: int = 0
    msgs_received: int = 0
    bytes_received: int = 0
    dropped: int = 0
    late: int = 0
    send_failed: int = 0
    refused: int = 0
    disconnects: int = 0
    bundles_sent: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
