"""Task streams (fastadapt.data.streams): deterministic per seed, change points where they say, phases
of classes that appear and retire, user phases from a folder, and the episodic task source on top."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt import ClassDataset, DataError
from fastadapt.algorithms.predictors import check_update
from fastadapt.config.build import SourceRequest
from fastadapt.core.contract import check_task_batch, check_task_source
from fastadapt.data.streams import (
    ClassStream,
    SinusoidStream,
    TaskStream,
    folder_stream,
    load_phase_folder,
    omniglot_stream,
    rotate_images,
    sinusoid_stream,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_classes(classes: int = 8, per_class: int = 6, side: int = 8) -> ClassDataset:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(classes * per_class, 1, side, side, generator=g) * 255).to(torch.uint8)
    return ClassDataset.from_arrays(
        x, torch.arange(classes).repeat_interleave(per_class), name="toy", class_names=[f"c{i}" for i in range(classes)]
    )


# --- sinusoids ----------------------------------------------------------------------------------


def test_sinusoid_stream_is_a_pure_function_of_seed_and_step():
    a, b, other = (
        SinusoidStream(3, length=60, phase_length=20, points=4),
        SinusoidStream(3, length=60, phase_length=20, points=4),
        SinusoidStream(4, length=60, phase_length=20, points=4),
    )
    assert isinstance(a, TaskStream)
    backwards = [b.step(t) for t in reversed(range(60))][::-1]  # read in another order
    for t in range(60):
        x, y = a.step(t)
        assert x.shape == (4, 1) and y.shape == (4, 1)
        assert torch.equal(x, backwards[t][0]) and torch.equal(y, backwards[t][1])
        assert torch.equal(a.probe(t)[1], b.probe(t)[1])
    assert not torch.equal(a.step(5)[0], other.step(5)[0])
    amp, phase = a.params(7)
    assert torch.allclose(a.step(7)[1], amp * torch.sin(a.step(7)[0] - phase))


def test_sinusoid_change_points_are_where_they_say_and_the_drift_is_gradual_between_them():
    s = SinusoidStream(0, length=500, phase_length=50, amplitude_drift=0.01, phase_drift=0.02)
    assert s.change_points == tuple(range(50, 500, 50))
    jumps = []
    for t in range(1, 500):
        (a0, p0), (a1, p1) = s.params(t - 1), s.params(t)
        if t in s.change_points:
            jumps.append(abs(a1 - a0) + abs(p1 - p0))
            assert s.phase(t) == s.phase(t - 1) + 1
        else:
            assert s.phase(t) == s.phase(t - 1)
            assert abs(a1 - a0) <= 0.01 + 1e-12 and abs(abs(p1 - p0) - 0.02) < 1e-12  # gradual, at the stated rates
    assert np.median(jumps) > 20 * 0.03  # abrupt: the switches are far larger than a step of drift
    explicit = SinusoidStream(0, length=30, change_points=(7, 19))
    assert explicit.change_points == (7, 19) and [explicit.phase(t) for t in (6, 7, 18, 19)] == [0, 1, 1, 2]
    assert all(0.1 <= s.params(t)[0] <= 5.0 for t in range(500))


@pytest.mark.parametrize("points", [(10, 10), (0, 5), (5, 30), (12, 5)])
def test_zero_length_phases_are_a_one_line_error(points):
    with pytest.raises(DataError, match="phase . runs from step .* a phase of length") as e:
        SinusoidStream(0, length=30, change_points=points)
    assert "\n" not in str(e.value)


def test_a_class_stream_with_a_zero_length_phase_is_a_one_line_error():
    with pytest.raises(DataError, match="phase 1 has length 0; every phase needs at least one step"):
        ClassStream(toy_classes(), [[0, 1], [2, 3], [4]], [3, 0, 2])


# --- class streams ------------------------------------------------------------------------------


def test_replacing_stream_brings_new_classes_and_retires_old_ones_at_the_change_points():
    data = toy_classes(classes=20)
    s = ClassStream.replacing(data, seed=5, length=23, ways=4, phase_length=5, replace=2, holdout=2, rotation=3.0)
    assert s.change_points == (5, 10, 15, 20) and s.length == 23
    seen: set[int] = set()
    for t in range(s.length):
        active = set(s.classes(t))
        assert len(active) == 4
        if t in s.change_points:
            before = set(s.classes(t - 1))
            assert len(active - before) == 2 and len(before - active) == 2  # two appear, two retire
            assert not (active - before) & seen  # new characters are new to the stream
        elif t:
            assert active == set(s.classes(t - 1))
        seen |= active
        x, y = s.step(t)
        assert x.shape == (4, 1, 8, 8) and sorted(y.tolist()) == sorted(
            s.label(c, i) for i, c in enumerate(s.classes(t))
        )
    assert [step for _, step in s.new_labels()] == [5, 5, 10, 10, 15, 15, 20, 20]
    assert s.num_labels == 4 + 2 * 4 and s.angle(10) == 30.0
    again = ClassStream.replacing(data, seed=5, length=23, ways=4, phase_length=5, replace=2, holdout=2, rotation=3.0)
    assert all(
        torch.equal(s.step(t)[0], again.step(t)[0]) and torch.equal(s.probe(t)[1], again.probe(t)[1]) for t in range(23)
    )


def test_class_stream_probes_are_never_given_by_step_and_slot_labels_stay_in_the_head():
    data = toy_classes()
    s = ClassStream(data, [[0, 1, 2], [3, 1, 2]], [40, 40], seed=1, holdout=2, labels="slot")
    given = {tuple(x.flatten().tolist()) for t in range(80) for x in s.step(t)[0]}
    probes = {tuple(x.flatten().tolist()) for t in (0, 40) for x in s.probe(t)[0]}
    assert given and probes and not given & probes
    assert {int(v) for t in range(80) for v in s.step(t)[1]} == {0, 1, 2}  # class 3 takes class 0's slot
    px, py = s.probe(45)
    assert px.shape == (6, 1, 8, 8) and py.tolist() == [0, 0, 1, 1, 2, 2]


def test_rotation_drift_turns_the_images_gradually():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6:] = 1.0  # a bar pointing right
    quarter = rotate_images(x, 90.0)
    assert torch.allclose(quarter, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.equal(rotate_images(x, 360.0), x)


def test_phases_from_a_folder_name_one_class_by_its_name_in_every_phase(tmp_path):
    from PIL import Image

    for phase, classes in (("1-first", ("a", "b")), ("2-second", ("b", "c"))):
        for c in classes:
            (tmp_path / phase / c).mkdir(parents=True)
            for k in range(3):
                Image.fromarray(np.full((6, 6), 40 * k + ord(c) - 90, dtype=np.uint8)).save(
                    tmp_path / phase / c / f"{k}.png"
                )
    data, phases = load_phase_folder(tmp_path)
    assert data.names == ("a", "b", "c") and phases == [["a", "b"], ["b", "c"]]
    assert data.counts.tolist() == [3, 6, 3]  # b's examples of both phases
    s = ClassStream.phased(data, [4, 6], phases)
    assert s.change_points == (4,) and {int(v) for v in s.step(5)[1]} == {1, 2}
    source = folder_stream(SourceRequest("train", 2, 1, 1, 0, str(tmp_path), image_size=6, options={"phase_length": 5}))
    batch = source.sample_tasks(0, 0, 3)
    check_task_batch(batch, "stream-folder", 2, 1, 1)
    with pytest.raises(DataError, match="names no folder"):
        folder_stream(SourceRequest("train", 2, 1, 1, 0, ""))


# --- the task source ----------------------------------------------------------------------------


def test_stream_windows_are_pure_and_the_query_follows_the_support_in_time():
    source = sinusoid_stream(SourceRequest("train", 1, 6, 3, 7, options={"length": 40, "phase_length": 10}))
    check_task_source(source, "sinusoid-stream")
    a = source.sample_tasks(2, 0, 5)
    b = fastadapt.TaskBatch.cat([source.sample_tasks(2, 0, 3), source.sample_tasks(2, 3, 2)])  # in two calls
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    check_task_batch(a, "sinusoid-stream", 1, 6, 3)
    assert a.support_x.shape == (5, 6, 1) and a.query_x.shape == (5, 3, 1)
    fixed = [list(source.fixed(7, 3)), list(source.fixed(7, 3))]
    assert all(torch.equal(u.query_y, v.query_y) for u, v in zip(*fixed))
    # task i of step s is the window of stream _mix(seed, s, i) at a step drawn from the same seed
    from fastadapt.data.sampler import _mix

    seed = _mix(7, 2, 1)
    t = random.Random(seed).randrange(6, 40 - 3 + 1)
    sx, sy, qx, qy = SinusoidStream(seed, length=40, phase_length=10).window(t, 6, 3)
    stream = SinusoidStream(seed, length=40, phase_length=10)
    assert torch.equal(a.support_x[1], sx) and torch.equal(a.query_y[1], qy)
    assert torch.equal(sx[-1], stream.step(t - 1)[0][0]) and torch.equal(qx[0], stream.step(t)[0][0])


def test_omniglot_stream_source_gives_rotated_episodes_of_the_active_characters_and_its_streams():
    request = SourceRequest(
        "test", 3, 2, 1, 0, options={"length": 60, "phase_length": 20, "replace": 1, "rotation": 1.5}
    )
    source = omniglot_stream(request)
    batch = source.sample_tasks(0, 0, 2)
    check_task_batch(batch, "omniglot-stream", 3, 2, 1)
    assert batch.support_x.shape == (2, 6, 1, 28, 28) and batch.support_x.dtype == torch.float32
    stream = source.stream(0)
    assert stream.change_points == (20, 40) and stream.length == 60
    assert torch.equal(stream.step(3)[0], source.stream(0).step(3)[0]) and not torch.equal(
        stream.step(3)[0], source.stream(1).step(3)[0]
    )
    x, y = stream.probe(30)
    assert x.shape == (3 * 5, 1, 28, 28) and len(set(y.tolist())) == 3
    with pytest.raises(DataError, match="not an option of omniglot-stream; it takes length"):
        omniglot_stream(SourceRequest("test", 3, 2, 1, 0, options={"lenght": 60}))
    with pytest.raises(DataError, match="needs .* classes; omniglot-vinyals-test has 423"):
        omniglot_stream(SourceRequest("test", 5, 1, 1, 0, options={"length": 10000, "phase_length": 10}))


def test_update_batches_are_checked_in_one_line():
    like_x, like_y = torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)
    cases = [
        (
            (torch.zeros(2, 1, 5, 5), torch.zeros(2, dtype=torch.long)),
            "shape \\[1, 5, 5\\] per example; this predictor was adapted on \\[1, 4, 4\\]",
        ),
        ((torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.long)), "2 inputs with targets of shape \\[3\\]"),
        ((torch.zeros(2, 1, 4, 4), torch.tensor([0, -1])), "label -1 is negative"),
        ((torch.zeros(2, 1, 4, 4), torch.zeros(2)), "this predictor classifies"),
        ((torch.full((2, 1, 4, 4), math.nan), torch.zeros(2, dtype=torch.long)), "inputs hold NaN"),
    ]
    for (x, y), match in cases:
        with pytest.raises(DataError, match=match) as e:
            check_update(x, y, like_x, like_y)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="target 1 is nan; targets must be finite"):
        check_update(torch.zeros(2, 1), torch.tensor([[0.0], [math.nan]]), torch.zeros(0, 1), torch.zeros(0, 1))
