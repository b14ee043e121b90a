"""TensorBoard scalar summaries written with tensorboard's own event-file writer (no TensorFlow).

View them with `tensorboard --logdir <workdir>/tensorboard`.
"""
from __future__ import annotations

import time
from collections.abc import Mapping

from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import event_file_writer


class ScalarWriter:
  """Appends one event per `write_scalars` call to a new `events.out.tfevents.*` file in `logdir`.

  Each value is stored as a float32 `simple_value`, which TensorBoard's Scalars dashboard reads.
  Every call is flushed to disk, so a run that dies keeps the scalars it wrote.
  """

  def __init__(self, logdir: str | epath.PathLike):
    self._writer = event_file_writer.EventFileWriter(str(logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    """Writes `scalars` (tag -> value) at `step` and flushes them."""
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in scalars.items()])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    self._writer.flush()

  def close(self):
    """Flushes what is pending and closes the event file."""
    self._writer.close()
