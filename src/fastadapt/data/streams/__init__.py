"""Task streams that drift and switch over time (docs/CHANGE.md), and task sources that meta-train on them.

:class:`TaskStream` is the protocol; :class:`SinusoidStream` and :class:`ClassStream` are streams;
:class:`StreamTasks` hands out episodes of seeded streams and the streams themselves. The registered
builders are :func:`sinusoid_stream`, :func:`omniglot_stream` and :func:`folder_stream`.
"""

from fastadapt.data.streams.classes import ClassStream, load_phase_folder, merge_by_name, rotate_images
from fastadapt.data.streams.protocol import TaskStream, check_change_points, phase_lengths, stream_window
from fastadapt.data.streams.sinusoid import SinusoidStream
from fastadapt.data.streams.tasks import StreamTasks, folder_stream, omniglot_stream, sinusoid_stream

__all__ = [
    "ClassStream",
    "SinusoidStream",
    "StreamTasks",
    "TaskStream",
    "check_change_points",
    "folder_stream",
    "load_phase_folder",
    "merge_by_name",
    "omniglot_stream",
    "phase_lengths",
    "rotate_images",
    "sinusoid_stream",
    "stream_window",
]
