"""TensorBoard scalars of a peer, mirrored from its events: `<out>/tensorboard/peer-<id>/events.out.tfevents.*`.

`tensorboard --logdir <out>/tensorboard` then shows every peer of a run as its own TensorBoard run, the same tags
overlaid. The sink is one of the peer's `EventLog` sinks (`dlion.metrics`): every `iter`, `eval` and `final` event
becomes one TensorBoard event at the event's iteration (`it`) and wall time, holding the scalars of `SCALARS`.

No TensorFlow here (the project's rule: TensorFlow only in the trainer). TensorBoard's own `EventFileWriter` would
import TensorFlow where it is installed (`tensorboard.compat.tf` prefers it for its file I/O), so the records are
written with the package's pure-Python `RecordWriter` on a plain file, as `Event`/`Summary` protos, the first record
the file version, as `EventFileWriter` writes them. Each event is flushed to the operating system as it is written,
so a killed peer leaves a readable file (a record torn by the kill is where TensorBoard's reader stops).

A peer's directory mirrors its JSONL file: where the peer starts a fresh `peer-<id>.jsonl` (a new run; `dlion run`
removes an earlier run's, `--overwrite`), the event files of an earlier run there are removed too; where the JSONL
file goes on (a resumed run, a peer started again by hand) a new event file is added beside the earlier ones, and
TensorBoard replaces the steps that were run again.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from pathlib import Path

from dlion.metrics import peer_log_path

LOG = logging.getLogger("dlion.tensorboard")

SCALARS = {  # event kind -> (event field, dotted for a nested one; TensorBoard tag)
    "iter": [("loss", "train/loss"), ("samples_per_s", "train/samples_per_s"), ("batch", "train/batch_size"),
             ("compute_s", "train/compute_s"), ("wait_s", "train/wait_s"), ("max_wait_s", "train/max_wait_s"),
             ("rate", "train/compute_rate"), ("gossip.w", "train/push_sum_weight"),
             ("bytes_sent", "net/bytes_sent"), ("bytes_received", "net/bytes_received"),
             ("messages_dropped", "net/messages_dropped"), ("cpu", "system/cpu_cores"), ("rss_mb", "system/rss_mb")],
    "eval": [("acc", "eval/accuracy"), ("loss", "eval/loss"), ("mean_acc", "eval/mean_accuracy_of_peers")],
    "final": [("acc", "final/test_accuracy"), ("loss", "final/test_loss")],
}
_FILES = itertools.count()  # distinguishes two writers of one process started within the same second


def logdir(out_dir: str | Path, peer_id: int) -> Path:
    return Path(out_dir) / "tensorboard" / f"peer-{peer_id}"


def scalars(event: dict) -> list[tuple[str, float]]:
    """(tag, value) of the event's figures that TensorBoard shows; fields an event lacks, or holds no number in, are
    left out."""
    found = []
    for field, tag in SCALARS.get(event.get("ev"), ()):
        value = event
        for key in field.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append((tag, float(value)))
    return found


class TensorBoardSink:
    """Writes a peer's events as TensorBoard scalars into a new event file in `directory`."""

    def __init__(self, directory: str | Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2  # the protos only: no TensorFlow
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = directory / (f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}."
                                 f"{next(_FILES)}")
        self._writer = RecordWriter(open(self.path, "wb"))
        self._write(self._event(wall_time=now, file_version="brain.Event:2",
                                source_metadata=event_pb2.SourceMetadata(writer="dlion")))

    def write(self, event: dict) -> None:
        """One TensorBoard event at the event's iteration, if it has figures to show."""
        values = scalars(event)
        if not values or not isinstance(event.get("it"), int):
            return
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=v) for tag, v in values])
        self._write(self._event(wall_time=event.get("t", time.time()), step=event["it"], summary=summary))

    def _write(self, event) -> None:
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def close(self) -> None:
        if not self._writer.closed:
            self._writer.close()


def tensorboard_sinks(output, out_dir: str | Path, peer_id: int) -> list[TensorBoardSink]:
    """The TensorBoard sink of peer `peer_id` when `output.tensorboard` is on (none without the `tensorboard`
    package: a warning says so). Call it before the peer's `EventLog` opens its JSONL file: a peer that starts that
    file afresh starts its TensorBoard directory afresh too (the module docstring)."""
    if not output.tensorboard:
        return []
    directory = logdir(out_dir, peer_id)
    if not peer_log_path(out_dir, peer_id).exists():
        for stale in directory.glob("events.out.tfevents.*"):
            stale.unlink(missing_ok=True)
    try:
        return [TensorBoardSink(directory)]
    except ImportError as exc:
        LOG.warning("no TensorBoard files: the tensorboard package is missing (%s); pip install tensorboard, or set "
                    "output.tensorboard: false", exc)
        return []
