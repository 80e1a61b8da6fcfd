"""ResNet-12 (shapes, options, a training step through fastadapt.train) and the seeded augmentation of training
episodes."""

from __future__ import annotations

import pytest
import torch

import fastadapt
from fastadapt.config import load_config
from fastadapt.config.build import build_algorithm, task_sources
from fastadapt.core.errors import ConfigError
from fastadapt.core.registry import MODELS
from fastadapt.data.augment import AugmentedTasks, augment_task, crop, flip, jitter, rotate90_per_class, shift
from fastadapt.nn.resnet import ResNet12, drop_block, resnet12

TINY = [
    "data.ways=3",
    "data.shots=1",
    "data.queries=2",
    "data.meta_batch=2",
    "data.test_queries=2",
    "data.image_size=16",
    "optim.steps=2",
    "eval.val_every=0",
    "eval.test_episodes=4",
    "eval.batch=2",
    "run.progress=false",
    "run.threads=1",
]


@pytest.mark.parametrize(
    "channels,width,dim", [((64, 160, 320, 640), 0.125, 80), ((64, 128, 256, 512), 0.25, 128), ((4, 8, 8, 16), 2, 32)]
)
def test_resnet12_shapes_for_embeddings_and_heads(channels, width, dim):
    torch.manual_seed(0)
    enc = resnet12(3, None, 20, channels=channels, width=width)
    assert [b.conv1.out_channels for b in enc.blocks] == [round(c * width) for c in channels]
    assert all(
        len([m for m in b.modules() if isinstance(m, torch.nn.Conv2d)]) == 4 for b in enc.blocks
    )  # 3 convs + shortcut
    assert enc(torch.randn(5, 3, 20, 20)).shape == (5, dim) and enc.embedding_dim == dim
    assert resnet12(1, 7, 28, channels=channels, width=width)(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert MODELS.get("resnet12") is resnet12


def test_resnet12_refuses_what_it_cannot_take_in_one_line():
    for kwargs, match in [
        ({"image_size": 8}, "too small"),
        ({"channels": [1, 2, 3]}, "4 widths"),
        ({"width": 0}, "width=0"),
        ({"drop_prob": 1.0}, r"drop_prob=1.0 is invalid"),
        ({"input_shape": (5,)}, "images"),
    ]:
        args = {"in_channels": 1, "out_features": None, "image_size": 28, **kwargs}
        with pytest.raises(ConfigError, match=match) as e:
            resnet12(**args)
        assert "\n" not in str(e.value)


def test_drop_block_drops_about_the_rate_in_squares_and_is_identity_in_eval():
    x = torch.ones(8, 4, 12, 12)
    assert drop_block(x, 0.2, 3, training=False) is x and drop_block(x, 0.0, 3) is x
    torch.manual_seed(0)
    y = drop_block(x, 0.2, 3)
    dropped = float((y == 0).float().mean())
    assert 0.1 < dropped < 0.3  # about drop_prob (overlapping blocks make it a little less)
    assert torch.allclose(y.mean(), torch.tensor(1.0), atol=1e-5)  # rescaled to keep the mean
    assert drop_block(torch.ones(1, 1, 5, 5), 0.5, 1).unique().numel() <= 2


def test_a_resnet12_protonet_trains_through_fastadapt_train_with_augmentation(tmp_path):
    cfg = load_config(
        "protonet-resnet12-omniglot-5w1s",
        [
            *TINY,
            "model.options={ width = 0.125 }",
            'data.augment=["flip", "rotate90", "crop", "shift", "jitter"]',
            f"run.out={tmp_path / 'r'}",
        ],
    )
    before = {k: v.clone() for k, v in build_algorithm(cfg).state_dict().items()}
    result = fastadapt.train(cfg)
    assert result.steps == 2 and 0 <= result.tests["5w1s"].mean <= 1
    after = fastadapt.load_run(tmp_path / "r").algorithm.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert isinstance(fastadapt.load_run(tmp_path / "r").algorithm.model, ResNet12)


def _reference_shift(img, dy, dx):
    """A plain loop: output pixel (i, j) reads input (i - dy, j - dx), clamped to the image (edge replicated)."""
    _, h, w = img.shape
    out = torch.empty_like(img)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = img[:, min(max(i - dy, 0), h - 1), min(max(j - dx, 0), w - 1)]
    return out


def test_shift_flip_and_rotate90_match_plain_references():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 2, 9, 9, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    seed = 5
    d = torch.randint(-2, 3, (2, 6), generator=torch.Generator().manual_seed(seed))
    out = shift(x, torch.Generator().manual_seed(seed), margin=2)
    for m in range(6):
        assert torch.equal(out[m], _reference_shift(x[m], int(d[0, m]), int(d[1, m])))
    mask = torch.rand(6, generator=torch.Generator().manual_seed(seed)) < 0.5
    f = flip(x, torch.Generator().manual_seed(seed))
    for m in range(6):
        assert torch.equal(f[m], x[m].flip(-1) if mask[m] else x[m])
    k = torch.randint(0, 4, (3,), generator=torch.Generator().manual_seed(seed))
    r = rotate90_per_class(x, y, 3, torch.Generator().manual_seed(seed))
    for m in range(6):
        want = x[m]
        for _ in range(int(k[y[m]])):  # rot90 once = transpose, then flip rows (counter-clockwise)
            want = want.transpose(-2, -1).flip(-2)
        assert torch.equal(r[m], want)


@pytest.mark.parametrize("ops", ['["flip", "rotate90", "shift"]', '["jitter", "crop", "flip"]'])
def test_augmented_tasks_are_a_pure_function_of_seed_step_and_index(ops):
    cfg = load_config("protonet-quick", [*TINY, "data.image_size=28", f"data.augment={ops}"])
    train = task_sources(cfg).train
    assert isinstance(train, AugmentedTasks)
    a, b = train.sample_tasks(7, 0, 4), task_sources(cfg).train.sample_tasks(7, 0, 4)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    part = train.sample_tasks(7, 2, 2)  # tasks 2 and 3 alone (another process's shard): the same tasks
    assert torch.equal(part.support_x, a.support_x[2:]) and torch.equal(part.query_x, a.query_x[2:])
    plain = train.source.sample_tasks(7, 0, 4)
    assert torch.equal(a.support_y, plain.support_y) and torch.equal(a.classes, plain.classes)
    assert not torch.equal(a.support_x, plain.support_x)  # augmented
    assert not torch.equal(train.sample_tasks(8, 0, 4).support_x, a.support_x)
    other = task_sources(
        load_config("protonet-quick", [*TINY, "data.image_size=28", "run.seed=1", f"data.augment={ops}"])
    )
    assert not torch.equal(
        other.train.sample_tasks(7, 0, 4).support_x,
        task_sources(load_config("protonet-quick", [*TINY, "data.image_size=28", "run.seed=1"]))
        .train.sample_tasks(7, 0, 4)
        .support_x,
    )
    # evaluation episodes are never augmented
    sources = task_sources(cfg)
    unaugmented = task_sources(load_config("protonet-quick", [*TINY, "data.image_size=28"]))
    assert torch.equal(
        next(iter(sources.tests["5w1s"].fixed(2, 2))).support_x,
        next(iter(unaugmented.tests["5w1s"].fixed(2, 2))).support_x,
    )


def test_augment_task_keeps_support_and_query_apart_and_config_refuses_unknown_names():
    g = torch.Generator().manual_seed(0)
    s, q = torch.rand(3, 1, 8, 8, generator=g), torch.rand(6, 1, 8, 8, generator=g)
    sa, qa = augment_task(
        s, torch.arange(3), q, torch.arange(3).repeat_interleave(2), 3, ("flip",), torch.Generator().manual_seed(1)
    )
    mask = torch.rand(9, generator=torch.Generator().manual_seed(1)) < 0.5
    both = torch.cat([s, q])
    want = torch.where(mask.view(-1, 1, 1, 1), both.flip(-1), both)
    assert torch.equal(sa, want[:3]) and torch.equal(qa, want[3:])
    with pytest.raises(ConfigError, match="data.augment=.*'blur' is not one of flip, rotate90, crop, shift, jitter"):
        load_config("protonet-quick", ['data.augment=["blur"]'])
    assert load_config("protonet-quick", ['data.augment=["jitter", "crop"]']).data.augment == ("jitter", "crop")


def _reference_crop(img, padding, top, left):
    """A plain loop: output pixel (i, j) is pixel (top + i, left + j) of the image zero-padded by ``padding`` on
    each side."""
    _, h, w = img.shape
    out = torch.zeros_like(img)
    for i in range(h):
        for j in range(w):
            si, sj = top + i - padding, left + j - padding
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = img[:, si, sj]
    return out


def _reference_jitter(img, b, c, s, clamp):
    """Colour jitter of one image ``[C, H, W]`` pixel by pixel with Python floats: brightness, contrast, saturation."""
    ch, h, w = img.shape
    v = [[[float(img[k, i, j]) for j in range(w)] for i in range(h)] for k in range(ch)]
    bound = (lambda t: min(max(t, 0.0), 1.0)) if clamp else (lambda t: t)

    def grey(v):
        if ch == 3:
            return [[0.299 * v[0][i][j] + 0.587 * v[1][i][j] + 0.114 * v[2][i][j] for j in range(w)] for i in range(h)]
        return [[sum(v[k][i][j] for k in range(ch)) / ch for j in range(w)] for i in range(h)]

    v = [[[bound(b * v[k][i][j]) for j in range(w)] for i in range(h)] for k in range(ch)]
    g = grey(v)
    mean = sum(sum(row) for row in g) / (h * w)
    v = [[[bound(c * v[k][i][j] + (1 - c) * mean) for j in range(w)] for i in range(h)] for k in range(ch)]
    g = grey(v)
    v = [[[bound(s * v[k][i][j] + (1 - s) * g[i][j]) for j in range(w)] for i in range(h)] for k in range(ch)]
    return torch.tensor(v, dtype=torch.float64)


def test_crop_matches_a_plain_pad_and_crop_loop():
    x = (
        torch.rand(6, 2, 9, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    )  # no zeros of its own
    for padding, seed in [(None, 3), (2, 4), (4, 5)]:
        p = 1 if padding is None else padding  # the default: max(1, min(9, 7) // 8) = 1
        offsets = torch.randint(0, 2 * p + 1, (2, 6), generator=torch.Generator().manual_seed(seed))
        out = crop(x, torch.Generator().manual_seed(seed), padding)
        assert out.shape == x.shape
        for m in range(6):
            assert torch.equal(out[m], _reference_crop(x[m], p, int(offsets[0, m]), int(offsets[1, m])))
    offsets = torch.randint(0, 9, (2, 6), generator=torch.Generator().manual_seed(6))
    assert bool((crop(x, torch.Generator().manual_seed(6), 4) == 0).any()) and bool(
        (offsets != 4).any()
    )  # zero fill shows


@pytest.mark.parametrize("channels", [3, 1])
def test_jitter_matches_a_per_pixel_reference_and_saturation_is_a_no_op_on_grey(channels):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, channels, 4, 5, generator=g, dtype=torch.float64)
    x[0] = 0.5 + 0.5 * x[0]  # a bright image: brightness up clamps at 1
    factors = 1 + 0.4 * (2 * torch.rand(3, 5, generator=torch.Generator().manual_seed(2)) - 1)
    out = jitter(x, torch.Generator().manual_seed(2))
    assert out.dtype == torch.float64 and float(out.min()) >= 0 and float(out.max()) <= 1
    for m in range(5):
        b, c, s = (float(f) for f in factors[:, m].to(torch.float64))
        assert torch.allclose(out[m], _reference_jitter(x[m], b, c, s, clamp=True), rtol=0, atol=1e-12)
        if channels == 1:  # saturation is a no-op on grey images: the same result with s = 1
            assert torch.allclose(out[m], _reference_jitter(x[m], b, c, 1.0, clamp=True), rtol=0, atol=1e-12)
    if channels == 3:  # on colour images saturation does change them
        b, c, s = (float(f) for f in factors[:, 1].to(torch.float64))
        assert not torch.allclose(out[1], _reference_jitter(x[1], b, c, 1.0, clamp=True), atol=1e-6)
    loose = jitter(
        4 * x - 2, torch.Generator().manual_seed(2), strength=0.3, clamp=False
    )  # normalised values: no clamp
    factors = 1 + 0.3 * (2 * torch.rand(3, 5, generator=torch.Generator().manual_seed(2)) - 1)
    for m in range(5):
        assert torch.allclose(
            loose[m],
            _reference_jitter(4 * x[m] - 2, *(float(f) for f in factors[:, m]), clamp=False),
            rtol=0,
            atol=1e-12,
        )
    assert float(loose.min()) < 0 or float(loose.max()) > 1


def test_augment_task_clamps_jitter_only_for_images_in_zero_one():
    g = torch.Generator().manual_seed(3)
    s, q = torch.rand(2, 3, 6, 6, generator=g), torch.rand(4, 3, 6, 6, generator=g)
    sy, qy = torch.arange(2), torch.arange(2).repeat_interleave(2)
    for shift_by, clamp in [(0.0, True), (-0.5, False)]:
        sa, qa = augment_task(s + shift_by, sy, q + shift_by, qy, 2, ("jitter",), torch.Generator().manual_seed(9))
        want = jitter(torch.cat([s, q]) + shift_by, torch.Generator().manual_seed(9), clamp=clamp)
        assert torch.equal(torch.cat([sa, qa]), want)
