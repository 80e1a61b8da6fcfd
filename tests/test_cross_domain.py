"""Other domains: evaluating a run on another task source, test-time fine-tuning, Lake's within-alphabet episodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fastadapt
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.cli import main as cli_main
from fastadapt.config import load_config
from fastadapt.config.build import task_sources
from fastadapt.core.errors import ConfigError, DataError
from fastadapt.data import ClassDataset, EpisodeSampler, class_groups, load_omniglot
from fastadapt.data.omniglot import SPLITS
from fastadapt.eval.finetune import FineTuned, finetune_logits, prototype_head
from fastadapt.nn import Conv4
from helpers import one_line_error


def test_lake_background_train_and_val_split_the_background_alphabets():
    lake = SPLITS["lake"]
    assert lake["background_train"][0] == 1 and lake["background_val"][1] == lake["background"][1]
    assert lake["background_train"][1] + 1 == lake["background_val"][0]
    alphabets = {
        part: {n.split("/")[0] for n in load_omniglot("lake", part).names}
        for part in ("background_train", "background_val", "evaluation")
    }
    assert (
        len(alphabets["background_train"]) == 25
        and len(alphabets["background_val"]) == 5
        and len(alphabets["evaluation"]) == 20
    )
    assert (
        not alphabets["background_train"] & alphabets["background_val"]
        and not alphabets["background_val"] & alphabets["evaluation"]
    )


def test_within_alphabet_episodes_draw_every_task_from_one_alphabet():
    data = load_omniglot("lake", "evaluation")
    sampler = EpisodeSampler(data, 20, 1, 2, seed=3, groups=class_groups(data, "alphabet"))
    batch = sampler.sample_tasks(0, 0, 30)
    alphabets = [{data.names[c].split("/")[0] for c in row.tolist()} for row in batch.classes]
    assert all(len(a) == 1 for a in alphabets) and len({next(iter(a)) for a in alphabets}) > 5
    assert torch.equal(
        batch.support_x, sampler.sample_tasks(0, 0, 30).support_x
    )  # a pure function of (seed, step, index)
    with pytest.raises(DataError, match="no group of omniglot-lake-evaluation has 60 classes"):
        EpisodeSampler(data, 60, 1, 2, groups=class_groups(data, "alphabet"))


def test_a_class_with_too_few_examples_is_named():
    x = torch.zeros(9, 1, 4, 4, dtype=torch.uint8)
    data = ClassDataset.from_arrays(x, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2]), class_names=["cat", "dog", "emu"])
    EpisodeSampler(data, 2, 1, 2)  # emu is left out of every task
    with pytest.raises(DataError, match="class 'emu' of arrays has 1 examples, fewer than shots \\+ queries = 3"):
        EpisodeSampler(data, 2, 1, 2, strict=True)


def test_test_dataset_is_converted_to_the_training_input_and_said_so(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(5):
        (tmp_path / "imgs" / "test" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), "RGB").save(
                tmp_path / "imgs" / "test" / f"c{c}" / f"{i}.png"
            )
    cfg = load_config(
        "protonet-quick", [f"data.test_dataset=folder:{tmp_path / 'imgs'}", "data.test_queries=2", "eval.val_every=0"]
    )
    sources = task_sources(cfg)
    batch = sources.tests["5w1s"].sample_tasks(0, 0, 2)
    assert batch.support_x.shape == (2, 5, 1, 28, 28)  # grey and 28x28 like the Omniglot training tasks
    assert (
        sources.conversions["5w1s"] == "test: RGB to grey (ITU-R 601 luma)"
    )  # the folder source resizes to data.image_size on load


def tiny_protonet() -> tuple[ProtoNet, fastadapt.TaskBatch]:
    torch.manual_seed(0)
    algo = ProtoNet(Conv4(out_features=None, hidden=8)).double().eval()
    batch = (
        EpisodeSampler(load_omniglot("vinyals", "test"), 5, 2, 3, seed=0).sample_tasks(0, 0, 2).to(dtype=torch.float64)
    )
    return algo, batch


def test_the_prototype_head_before_any_step_is_protonets_classifier():
    algo, batch = tiny_protonet()
    tuned = FineTuned(algo, "head", 0, 0.01).predict(batch)
    reference = []
    with torch.no_grad():  # ProtoNets' probabilities with each task's support and query embedded as separate batches
        for t in range(2):
            zs, zq = algo.model(batch.support_x[t]), algo.model(batch.query_x[t])
            protos = torch.stack([zs[batch.support_y[t] == c].mean(0) for c in range(5)])
            reference.append((-(torch.cdist(zq, protos) ** 2)).softmax(-1))
    reference = torch.stack(reference)
    assert torch.allclose(tuned.softmax(-1), reference, atol=1e-10)  # the same probabilities, not only the same argmax


def test_prototype_head_is_twice_the_means_and_minus_their_squared_norms():
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    w, b = prototype_head(z, torch.tensor([0, 0, 1]), 2)
    assert torch.equal(w, torch.tensor([[4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)) and torch.equal(
        b, torch.tensor([-4.0, -4.0], dtype=torch.float64)
    )


@pytest.mark.parametrize("mode", ["head", "encoder"])
def test_finetuning_fits_the_support_set_and_leaves_the_algorithm_alone(mode):
    algo, batch = tiny_protonet()
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    t = batch.task(0)

    def support_loss(steps: int) -> float:
        logits = finetune_logits(algo.model, t.support_x, t.support_y, t.support_x, mode, steps, 0.05)
        return float(torch.nn.functional.cross_entropy(logits, t.support_y))

    assert support_loss(30) < support_loss(0)
    assert all(torch.equal(before[k], v) for k, v in algo.state_dict().items())
    with torch.no_grad():  # evaluation may call it without autograd
        out = FineTuned(algo, mode, 3, 0.05).predict(batch)
    assert out.shape == (2, 15, 5) and torch.isfinite(out).all()


def test_finetuning_a_gradient_based_algorithm_is_a_one_line_error():
    with pytest.raises(ConfigError, match="applies to algorithms whose model is an embedding"):
        FineTuned(fastadapt.MAML(Conv4()), "head", 1, 0.01)
    with pytest.raises(ConfigError, match="eval.finetune='all' is not allowed"):
        load_config("protonet-quick", ["eval.finetune=all"])


def test_eval_on_another_domain_with_finetuning_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        cli_main(
            [
                "train",
                "protonet-quick",
                "optim.steps=2",
                "model.hidden=8",
                "eval.val_every=0",
                "eval.test_episodes=0",
                "run.progress=false",
                f"run.out={run}",
            ]
        )
        == 0
    )
    args = [
        "eval",
        str(run),
        "data.test_dataset=omniglot",
        "data.split=lake",
        "data.test_part=evaluation",
        "data.episode_scope=alphabet",
        "data.test_ways=20",
        "eval.test_episodes=4",
        "eval.finetune=head",
        "eval.finetune_steps=2",
        "run.progress=false",
    ]
    assert cli_main(args) == 0, capsys.readouterr().err
    files = list((run / "evals").glob("20w1s__*.json"))
    assert len(files) == 1
    d = json.loads(files[0].read_text())
    assert (
        d["episodes"] == 4
        and d["settings"]["finetune"]["mode"] == "head"
        and d["settings"]["episode_scope"] == "alphabet"
    )
    assert d["overrides"] == args[2:]


def test_bad_data_is_a_one_line_error_with_exit_2_and_writes_nothing(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "one" / "train" / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "one" / "train" / "only" / "a.png")
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03" + bytes(12))
    (tmp_path / "idx" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + bytes(2))
    for dataset, words in (
        (f"folder:{tmp_path / 'one'}", "need at least 2 classes"),
        (f"idx:{tmp_path / 'idx'}", "train-images-idx3-ubyte"),
        (f"folder:{tmp_path / 'missing'}", "does not exist"),
    ):
        out = tmp_path / "run"
        assert cli_main(["train", "protonet-quick", f"data.dataset={dataset}", f"run.out={out}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err, err
        assert not out.exists()


def test_a_link_outside_an_image_folder_is_refused_unless_asked_for_and_links_inside_are_fine(tmp_path, capsys):
    """An image folder that pulls in a file from elsewhere through a symbolic link is one line naming the link (the
    library call and ``fastadapt train``), ``outside_links`` follows it; a link within the folder always loads."""
    from PIL import Image

    root, elsewhere = tmp_path / "ds" / "train", tmp_path / "elsewhere"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), ord(c), dtype=np.uint8)).save(root / c / "1.png")
    elsewhere.mkdir()
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(elsewhere / "secret.png")
    (root / "a" / "2.png").symlink_to(root / "b" / "1.png")  # inside: fine
    assert ClassDataset.from_folder(root).data.shape[0] == 3
    (root / "b" / "2.png").symlink_to(elsewhere / "secret.png")
    msg = one_line_error(ClassDataset.from_folder, root)
    assert "b/2.png is a link to" in msg and "outside the folder" in msg and "outside_links" in msg
    data = ClassDataset.from_folder(root, outside_links=True)
    assert data.data.shape[0] == 4 and int(data.data[-1].max()) == 7
    (root / "b" / "2.png").unlink()
    (root / "c").symlink_to(elsewhere, target_is_directory=True)  # a whole class folder from elsewhere
    assert "c is a link to" in one_line_error(ClassDataset.from_folder, root)
    out = tmp_path / "run"
    args = [f"run.out={out}"]
    assert cli_main(["train", "protonet-quick", f"data.dataset=folder:{root.parent}", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outside the folder" in err, err
    assert not out.exists()
    for bad, words in (("{ outside_links = 1 }", "is not true or false"), ("{ follow = true }", "not an option")):
        cmd = ["train", "protonet-quick", f"data.dataset=folder:{root.parent}", f"data.options={bad}", *args]
        assert cli_main(cmd) == 2
        assert words in capsys.readouterr().err
    assert not out.exists()
