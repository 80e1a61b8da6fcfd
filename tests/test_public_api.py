"""The public surface is explicit and pinned: a change to it is a deliberate change to this test."""

import fastadapt
from fastadapt.registry import ALGORITHMS, algorithm_class

PUBLIC = {
    "ANIL", "FOMAML", "MAML", "MANN", "Algorithm", "ClassDataset", "Config", "ConfigError", "DataError", "Episode",
    "EpisodeSampler", "EvalResult", "FastAdaptError", "MatchingNet", "MetaLSTM", "MetaOutput", "MetaSGD", "ProtoNet",
    "Reptile", "Run", "RunFolder", "SinusoidTasks", "SourceRequest", "TaskBatch", "TaskSource", "TaskSources",
    "TrainResult", "config_from_dict", "evaluate", "keep_freed_memory", "load_config", "load_omniglot",
    "load_omniglot_originals", "load_run", "load_fashion_mnist", "load_idx", "read_idx", "online", "mean_ci", "register_algorithm", "register_model", "register_task_source",
    "train",
}


def test_all_is_pinned_and_importable():
    assert set(fastadapt.__all__) == PUBLIC
    for name in fastadapt.__all__:
        assert getattr(fastadapt, name) is not None


def test_train_is_the_function_not_a_subpackage():
    import fastadapt.engine.loop  # noqa: F401  (importing the engine must not shadow fastadapt.train)

    assert callable(fastadapt.train) and fastadapt.train.__module__ == "fastadapt.engine.loop"


def test_every_registered_algorithm_class_declares_the_contract():
    for name in ALGORITHMS.names():
        cls = algorithm_class(name)
        assert isinstance(getattr(cls, "needs_head", None), bool), name
        assert all(callable(getattr(cls, m, None)) for m in ("meta_loss", "adapt", "predict")), name
