"""The public surface is explicit and pinned: a change to it is a deliberate change to this test."""

import ast
import importlib
import inspect

import fastadapt
from fastadapt.core.registry import ALGORITHMS, algorithm_class

PUBLIC = {
    "ALFA",
    "ANIL",
    "FOMAML",
    "MAML",
    "MAMLRL",
    "EnvTasks",
    "MANN",
    "Algorithm",
    "ClassDataset",
    "Config",
    "ConfigError",
    "DataError",
    "Episode",
    "EpisodeDataset",
    "EpisodeSampler",
    "EvalResult",
    "FastAdaptError",
    "MatchingNet",
    "MetaLSTM",
    "MetaOutput",
    "MetaSGD",
    "NTMLearner",
    "ProtoNet",
    "ProtoMAML",
    "Reptile",
    "Run",
    "RunFolder",
    "SinusoidTasks",
    "SourceRequest",
    "TaskBatch",
    "TaskSource",
    "TaskSources",
    "TrainResult",
    "collate_tasks",
    "config_from_dict",
    "evaluate",
    "keep_freed_memory",
    "load_config",
    "load_omniglot",
    "load_omniglot_originals",
    "load_run",
    "load_fashion_mnist",
    "load_idx",
    "read_idx",
    "online",
    "explain",
    "mean_ci",
    "register_algorithm",
    "register_model",
    "register_task_source",
    "train",
    "meta_gradient",
    "tune",
    "export_run",
    "load_pretrained",
    "load_safetensors",
    "save_safetensors",
    "Predictor",
    "ExplainablePredictor",
    "Trainer",
    "Callback",
}


def test_all_is_pinned_and_importable():
    assert set(fastadapt.__all__) == PUBLIC
    for name in fastadapt.__all__:
        assert getattr(fastadapt, name) is not None


def test_every_public_name_is_listed_once_and_comes_from_its_concept_packages_all():
    listed = [name for names in fastadapt._EXPORTS.values() for name in names]
    assert len(listed) == len(set(listed)) == len(fastadapt.__all__), "a public name is listed twice"
    assert fastadapt.__all__ == sorted(listed)
    for name, module in fastadapt._WHERE.items():
        package = ".".join(module.split(".")[:2])  # fastadapt.<concept>
        value = getattr(fastadapt, name)
        assert value is getattr(importlib.import_module(module), name), name
        assert module == package, f"fastadapt.{name} must come from its concept package, not {module}"
        assert name in importlib.import_module(package).__all__, f"{package}.__all__ lacks {name}"


def test_the_type_checking_imports_name_the_same_modules_as_the_export_table():
    tree = ast.parse(inspect.getsource(fastadapt))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    imported = {a.name: n.module for n in block.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imported == fastadapt._WHERE


def test_each_concept_package_lists_its_public_names_once():
    for package in {".".join(m.split(".")[:2]) for m in fastadapt._WHERE.values()}:
        mod = importlib.import_module(package)
        assert mod.__all__ and len(set(mod.__all__)) == len(mod.__all__), package
        for name in mod.__all__:
            assert getattr(mod, name) is not None, (package, name)


def test_train_is_the_function_not_a_subpackage():
    import fastadapt.training.loop  # noqa: F401  (importing the engine must not shadow fastadapt.train)

    assert callable(fastadapt.train) and fastadapt.train.__module__ == "fastadapt.training.loop"


def test_every_registered_algorithm_class_declares_the_contract():
    for name in ALGORITHMS.names():
        cls = algorithm_class(name)
        assert isinstance(getattr(cls, "needs_head", None), bool), name
        assert all(callable(getattr(cls, m, None)) for m in ("meta_loss", "adapt", "predict")), name


def test_the_command_starts_without_importing_torch_so_an_early_interrupt_is_handled():
    import subprocess
    import sys

    code = "import sys, fastadapt, fastadapt.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", (
        out.stderr
    )  # torch is imported inside main(), where Ctrl-C gives one line and exit 130


def test_public_functions_are_not_shadowed_by_modules():
    import fastadapt.eval.streams  # noqa: F401
    import fastadapt.training.loop  # noqa: F401

    assert callable(fastadapt.online) and fastadapt.online.__module__ == "fastadapt.eval.streams"
    assert callable(fastadapt.train) and sorted(dir(fastadapt)) == dir(fastadapt) and "MAML" in dir(fastadapt)
