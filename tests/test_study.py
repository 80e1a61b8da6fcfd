"""The study runner (fastadapt study FILE): a tiny grid trained, evaluated, tabled and plotted; a second run
retrains and re-evaluates nothing; a run whose results are gone resumes from its checkpoint; bad files are one line."""

from __future__ import annotations

import json

import pytest

import fastadapt.training
from fastadapt.apps import study as study_module
from fastadapt.apps.study import StudyError, load_study, run_study
from fastadapt.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = """
description = "a tiny grid"
out = "{out}"
overrides = ["optim.steps=2", "data.meta_batch=2", "model.layers=[8]", "eval.val_every=0", "eval.test_episodes=0",
  "run.checkpoint_every=1000", "run.progress=false"]
seeds = [0, 1]
episodes = 3

[rows]
MAML = "maml-sinusoid"

[variants]
"lr 0.01" = []
"lr 0.1" = ["algorithm.inner_lr=0.1"]

[evals]
"0 steps" = {{ test = "5shot", overrides = ["algorithm.inner_steps_eval=0"] }}
"1 step" = {{ test = "5shot", overrides = ["algorithm.inner_steps_eval=1"] }}
"""


def write(tmp_path, text: str):
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_a_tiny_grid_gives_results_a_table_and_a_plot_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = write(tmp_path, TINY.format(out=out))
    lines: list[str] = []
    results = run_study(path, progress=lines.append)
    labels = ["MAML, lr 0.01, seed 0", "MAML, lr 0.01, seed 1", "MAML, lr 0.1, seed 0", "MAML, lr 0.1, seed 1"]
    assert list(results["cells"]) == labels
    for cell in results["cells"].values():
        assert cell["steps"] == 2 and set(cell["evals"]) == {"0 steps", "1 step"}
        assert all(
            e["metric"] == "mse" and e["episodes"] == 3 and len(e["scores"]) == 3 for e in cell["evals"].values()
        )
    seeds = results["cells"]["MAML, lr 0.1, seed 0"], results["cells"]["MAML, lr 0.1, seed 1"]
    assert seeds[0]["evals"]["1 step"]["mean"] != seeds[1]["evals"]["1 step"]["mean"]  # another seed, another model
    assert "run.seed=1" in seeds[1]["overrides"] and "algorithm.inner_lr=0.1" in seeds[1]["overrides"]
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| cell | 0 steps | 1 step | meta-steps | train min |" and len(table) == 2 + len(labels)
    mean = results["cells"][labels[0]]["evals"]["0 steps"]["mean"]
    assert table[2].startswith(f"| {labels[0]} | {mean:.4g} ± ")
    assert (out / "results.png").stat().st_size > 0
    assert any(line.startswith("[1/4] MAML, lr 0.01, seed 0: 0 steps: ") for line in lines)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was trained or evaluated again")

    monkeypatch.setattr(fastadapt.training, "train", refuse)
    monkeypatch.setattr(study_module, "evaluate_test", refuse)
    assert run_study(path, progress=lambda s: None) == results


def test_a_cell_whose_training_stopped_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = write(tmp_path, TINY.format(out=out).replace("seeds = [0, 1]", "seeds = [0]"))
    first = run_study(path, only=["MAML, lr 0.1, seed 0"], progress=lambda s: None)
    assert list(first["cells"]) == ["MAML, lr 0.1, seed 0"]
    run = load_study(path).cells[1].run
    (run / "results.json").unlink()  # as if stopped after its last checkpoint
    calls = []
    train = fastadapt.training.train

    def counting(*args, **kwargs):
        calls.append(args[0])
        return train(*args, **kwargs)

    monkeypatch.setattr(fastadapt.training, "train", counting)
    again = run_study(path, progress=lambda s: None)
    assert calls == ["maml-sinusoid", "maml-sinusoid"]  # the stopped cell and the new one
    assert again["cells"]["MAML, lr 0.1, seed 0"]["steps"] == 2
    assert (run / "checkpoint.pt").is_file() and len(again["cells"]) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("seeds = [0, 1]", "seed = [0, 1]"), "unknown key 'seed'"),
        (
            ('MAML = "maml-sinusoid"', 'MAML = "maml-sinusoidd"'),
            "row 'MAML, lr 0.01, seed 0': unknown preset 'maml-sinusoidd'",
        ),
        (('"optim.steps=2"', '"optim.stepz=2"'), "row 'MAML, lr 0.01, seed 0': unknown key optim.stepz"),
        (
            ('"algorithm.inner_steps_eval=0"', '"algorithm.nope=1"'),
            "row 'MAML, lr 0.01, seed 0': unknown key algorithm.nope",
        ),
        (
            ('MAML = "maml-sinusoid"', 'MAML = { preset = "maml-sinusoid", run = "../elsewhere" }'),
            "row 'MAML' has run = '../elsewhere'; a run is a folder inside",
        ),
    ],
)
def test_a_bad_study_file_is_one_line_and_exit_2(tmp_path, capsys, change, message):
    path = write(tmp_path, TINY.format(out=tmp_path / "out").replace(*change))
    with pytest.raises(StudyError, match="^" + str(path).replace("\\", "\\\\")):
        load_study(path)
    assert cli_main(["study", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastadapt: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing trained


def test_the_projects_study_files_load():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.toml")):
        study = load_study(path)
        assert study.cells and study.out.parts[0] == "results", path
