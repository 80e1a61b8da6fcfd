"""The public surface is explicit and pinned: a change to it is a deliberate change to this test."""

import fastadapt
from fastadapt.algorithms import REGISTRY, algorithm_class

PUBLIC = {
    "ANIL", "FOMAML", "MAML", "MANN", "ClassDataset", "ConfigError", "DataError", "Episode", "EpisodeSampler",
    "FastAdaptError", "MatchingNet", "MetaLSTM", "MetaOutput", "MetaSGD", "ProtoNet", "Reptile", "SinusoidTasks",
    "TaskBatch", "evaluate", "load_omniglot", "load_omniglot_originals", "mean_ci",
}


def test_all_is_pinned_and_importable():
    assert set(fastadapt.__all__) == PUBLIC
    for name in fastadapt.__all__:
        assert getattr(fastadapt, name) is not None


def test_every_registered_algorithm_imports_and_keeps_the_contract():
    for name in REGISTRY:
        cls = algorithm_class(name)
        assert isinstance(getattr(cls, "needs_head", None), bool), name
        for method in ("meta_loss", "adapt", "predict"):
            assert callable(getattr(cls, method, None)), f"{name}.{method}"
