"""Foundation: bundled Omniglot, splits, folders, arrays, sinusoids, the episode sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastadapt import ClassDataset, DataError, EpisodeSampler, SinusoidTasks, TaskBatch, load_omniglot
from fastadapt.data import omniglot


def test_bundled_omniglot_has_every_character_and_drawing():
    z = omniglot._bundled()
    assert z["images"].shape == (1623, 20, 28, 28)
    assert z["images"].dtype == np.uint8
    assert np.array_equal(z["char_ids"], np.arange(1, 1624))
    # ink is bright and every image has some ink and mostly background
    ink = z["images"].reshape(1623 * 20, -1).astype(np.float64) / 255
    assert (ink.max(axis=1) > 0.5).all()
    assert 0.02 < ink.mean() < 0.3
    assert z["characters"][0] == "Arcadian/character01" or z["characters"][0].endswith("character01")


def test_vinyals_split_sizes_disjoint_and_starts_test_at_gurmukhi_42():
    parts = {p: load_omniglot("vinyals", p, rotations=False) for p in ("train", "val", "test", "trainval")}
    assert parts["train"].num_classes == 1028
    assert parts["val"].num_classes == 172
    assert parts["test"].num_classes == 423
    assert parts["trainval"].num_classes == 1200
    names = {p: set(d.names) for p, d in parts.items()}
    assert not names["train"] & names["val"]
    assert not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    assert names["train"] | names["val"] == names["trainval"]
    assert parts["test"].names[0] == "Gurmukhi/character42"
    assert parts["trainval"].names[-1] == "Gurmukhi/character41"


def test_rotations_are_distinct_classes_of_rotated_images():
    plain = load_omniglot("vinyals", "test", rotations=False)
    rot = load_omniglot("vinyals", "test")
    assert rot.num_classes == 4 * plain.num_classes == 1692
    base = plain.examples(7)
    for r in range(4):
        assert rot.names[4 * 7 + r].endswith(f"/rot{90 * r}")
        assert torch.equal(rot.examples(4 * 7 + r), torch.rot90(base, r, dims=(-2, -1)))
    assert not torch.equal(rot.examples(28), rot.examples(29))


def test_lake_split_is_by_alphabet():
    bg = load_omniglot("lake", "background")
    ev = load_omniglot("lake", "evaluation")
    assert bg.num_classes == 964 and ev.num_classes == 659
    alphabets = lambda d: {n.split("/")[0] for n in d.names}  # noqa: E731
    assert len(alphabets(bg)) == 30 and len(alphabets(ev)) == 20
    assert not alphabets(bg) & alphabets(ev)


@pytest.mark.parametrize(
    ("split", "part", "match"),
    [("nope", "train", "unknown Omniglot split 'nope'"), ("vinyals", "background", "unknown part 'background'")],
)
def test_unknown_split_names_are_one_line_errors(split, part, match):
    with pytest.raises(DataError, match=match) as e:
        load_omniglot(split, part)
    assert "\n" not in str(e.value)


def _sampler(ways=5, shots=1, queries=15, seed=0):
    return EpisodeSampler(load_omniglot("vinyals", "train"), ways, shots, queries, seed=seed)


def test_sampler_shapes_labels_and_class_grouping():
    s = _sampler(ways=5, shots=3, queries=4)
    b = s.sample(6)
    assert isinstance(b, TaskBatch)
    assert b.support_x.shape == (6, 15, 1, 28, 28) and b.query_x.shape == (6, 20, 1, 28, 28)
    assert b.support_y.shape == (6, 15) and b.query_y.shape == (6, 20)
    assert b.support_y.dtype == torch.int64
    assert (b.ways, b.shots, b.queries, len(b)) == (5, 3, 4, 6)
    assert torch.equal(b.support_y[0], torch.arange(5).repeat_interleave(3))
    assert torch.equal(b.query_y[2], torch.arange(5).repeat_interleave(4))
    assert b.support_x.dtype == torch.float32 and 0 <= float(b.support_x.min()) and float(b.support_x.max()) <= 1
    # each task's classes are distinct; each label's examples come from its class
    data = s.dataset
    for t in range(6):
        assert len(set(b.classes[t].tolist())) == 5
        for label in range(5):
            cls = int(b.classes[t, label])
            pool = data.examples(cls).float() / 255
            for x in torch.cat([b.support_x[t, b.support_y[t] == label], b.query_x[t, b.query_y[t] == label]]):
                assert (pool - x).abs().flatten(1).amax(1).min() == 0


def test_sampler_is_deterministic_per_seed_and_independent_of_batching():
    a, b = _sampler(seed=3), _sampler(seed=3)
    x1, x2 = a.sample(8), b.sample(8)
    assert torch.equal(x1.support_x, x2.support_x) and torch.equal(x1.classes, x2.classes)
    assert not torch.equal(a.sample(8).classes, x1.classes)  # the stream moves on
    c = _sampler(seed=4).sample(8)
    assert not torch.equal(c.classes, x1.classes)
    # task i of step s is the same whether drawn alone or in a batch
    whole = a.sample_tasks(5, 0, 8)
    part = a.sample_tasks(5, 3, 2)
    assert torch.equal(whole.query_x[3:5], part.query_x)
    assert torch.equal(whole.classes[3:5], part.classes)


def test_fixed_evaluation_episodes_repeat_exactly():
    s = _sampler(seed=1)
    first = TaskBatch.cat(list(s.fixed(250, batch_size=100)))
    s.sample(4)
    again = TaskBatch.cat(list(s.fixed(250, batch_size=64)))
    assert len(first) == 250
    assert torch.equal(first.classes, again.classes) and torch.equal(first.support_x, again.support_x)
    fewer = TaskBatch.cat(list(s.fixed(90, batch_size=50)))  # a shorter set is a prefix (results tables pair on it)
    assert torch.equal(fewer.classes, first.classes[:90]) and torch.equal(fewer.query_x, first.query_x[:90])


def test_sampler_resume_from_state_dict():
    a = _sampler(seed=2)
    a.sample(2)
    state = a.state_dict()
    nxt = a.sample(2)
    b = _sampler(seed=2)
    b.load_state_dict(state)
    assert torch.equal(b.sample(2).support_x, nxt.support_x)


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "match"),
    [
        (5000, 1, 1, "ways=5000 exceeds the 4112 classes"),
        (5, 15, 6, "has 20 examples, fewer than shots \\+ queries = 21"),
        (0, 1, 1, "ways=0 is invalid"),
        (5, -1, 1, "shots=-1 is invalid"),
        (5, 1, 0, "queries=0 is invalid"),
    ],
)
def test_impossible_episode_shapes_are_one_line_errors(ways, shots, queries, match):
    with pytest.raises(DataError, match=match) as e:
        EpisodeSampler(load_omniglot("vinyals", "train"), ways, shots, queries)
    assert "\n" not in str(e.value)


def test_from_arrays_groups_by_label_and_samples():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=200) * 10  # arbitrary label values
    x = rng.normal(size=(200, 3)).astype(np.float32)
    x[:, 0] = y  # the first feature carries the label, to check grouping
    d = ClassDataset.from_arrays(x, y, name="toy")
    assert d.num_classes == 7 and d.names[0] == "0" and int(d.counts.sum()) == 200
    for c in range(7):
        assert (d.examples(c)[:, 0] == float(d.names[c])).all()
    b = EpisodeSampler(d, 3, 2, 2, seed=0).sample(5)
    for t in range(5):
        for label in range(3):
            assert (b.support_x[t, b.support_y[t] == label, 0] == float(d.names[int(b.classes[t, label])])).all()


def test_from_arrays_rejects_float_labels():
    with pytest.raises(DataError, match="need integer class labels"):
        ClassDataset.from_arrays(np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]))


def test_ragged_classes_skip_small_ones_and_never_index_past_a_class():
    x = torch.arange(3 + 10 + 6).float()[:, None]
    y = torch.tensor([0] * 3 + [1] * 10 + [2] * 6)
    d = ClassDataset.from_arrays(x, y)
    s = EpisodeSampler(d, 2, 2, 3, seed=0)  # needs 5 per class: class 0 is never eligible
    for _step in range(20):
        b = s.sample(4)
        assert 0 not in b.classes.tolist()
        for t in range(4):
            for label in range(2):
                cls = int(b.classes[t, label])
                vals = torch.cat(
                    [b.support_x[t, b.support_y[t] == label], b.query_x[t, b.query_y[t] == label]]
                ).flatten()
                lo, hi = int(d.offsets[cls]), int(d.offsets[cls + 1])
                assert ((vals >= lo) & (vals < hi)).all() and len(set(vals.tolist())) == 5


def test_image_folder_becomes_a_class_dataset(tmp_path):
    from PIL import Image

    for c in ("cat", "dog", "emu"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8, 8), 30 * i + (0 if c == "cat" else 100), dtype=np.uint8)).save(
                tmp_path / c / f"{i}.png"
            )
    (tmp_path / "notes.txt").write_text("ignored")
    d = ClassDataset.from_folder(tmp_path)
    assert d.names == ("cat", "dog", "emu") and d.data.shape == (12, 1, 8, 8) and d.data.dtype == torch.uint8
    assert int(d.examples(1)[0, 0, 0, 0]) == 100
    b = EpisodeSampler(d, 3, 1, 2, seed=0).sample(2)
    assert b.support_x.shape == (2, 3, 1, 8, 8)
    d2 = ClassDataset.from_folder(tmp_path, size=(4, 4))
    assert d2.data.shape == (12, 1, 4, 4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ClassDataset.from_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="no class subfolders"):
        ClassDataset.from_folder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        ClassDataset.from_folder(tmp_path)


def test_sinusoid_tasks_follow_the_maml_distribution():
    tasks = SinusoidTasks(shots=10, queries=10, seed=0)
    b = tasks.sample_tasks(0, 0, 500)
    params = tasks.task_params(0, 0, 500)
    assert b.support_x.shape == (500, 10, 1) and b.query_y.shape == (500, 10, 1)
    assert b.classes is None and b.support_y.is_floating_point()
    amp, phase = params[:, 0], params[:, 1]
    assert 0.1 <= float(amp.min()) and float(amp.max()) <= 5.0 and float(amp.std()) > 1.0
    assert 0.0 <= float(phase.min()) and float(phase.max()) <= math.pi
    x = torch.cat([b.support_x, b.query_x], 1)
    assert -5 <= float(x.min()) and float(x.max()) <= 5
    y = torch.cat([b.support_y, b.query_y], 1)
    assert torch.allclose(y, amp[:, None, None] * torch.sin(x - phase[:, None, None]))
    assert torch.equal(SinusoidTasks(10, 10, seed=0).sample_tasks(0, 3, 2).support_x, b.support_x[3:5])
