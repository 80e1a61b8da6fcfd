"""Several domains as one task source: their classes side by side, named ``<domain>:<class>``, so that
``data.episode_scope = "domain"`` draws every task's classes from one domain (Meta-Dataset's episodes,
Triantafillou et al. 2020, sec. 3.2: a source chosen uniformly, then the episode's classes within it)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastadapt.core.errors import DataError
from fastadapt.core.registry import TASK_SOURCES
from fastadapt.data.classes import ClassDataset, conform_images
from fastadapt.data.streams.classes import merge_by_name

DEFAULT_DOMAINS = ("omniglot", "glyphs", "kanji")  # the domains with train, val and test classes
SEPARATOR = ":"  # between a class's domain and its own name


def domain_of(class_name: str) -> str:
    """``"kanji:4e00"`` -> ``"kanji"`` (the group of ``data.episode_scope = "domain"``)."""
    return class_name.split(SEPARATOR, 1)[0]


def mixed_domains(request: Any) -> ClassDataset:
    """The classes of every domain in ``data.options.domains`` (registered task sources that give a
    :class:`ClassDataset` for ``request.part``), each converted to ``data.image_size`` and ``data.channels`` by
    the one conversion rule. ``data.options.<domain> = { ... }`` passes a domain its own options."""
    options = dict(request.options)
    names = options.pop("domains", list(DEFAULT_DOMAINS))
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise DataError(f'data.options.domains={names!r}: name two or more task sources, e.g. ["omniglot", "kanji"]')
    if len(set(names)) != len(names) or "domains" in names:
        raise DataError(f"data.options.domains={names!r}: each domain once, and not domains itself")
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise DataError(f"data.options.{unknown[0]} is not a domain of data.options.domains ({', '.join(names)})")
    parts = []
    for name in names:
        if name not in TASK_SOURCES:
            raise DataError(f"data.options.domains: {name!r} is not a task source; see fastadapt list")
        own = options.get(name, {})
        if not isinstance(own, dict):
            raise DataError(f"data.options.{name} must be a table of that domain's options, e.g. {{ size = 28 }}")
        built = TASK_SOURCES.get(name)(dataclasses.replace(request, options=dict(own), argument=""))
        if not isinstance(built, ClassDataset):
            raise DataError(f"domain {name!r} gives {type(built).__name__}, not classes of images; it cannot be mixed")
        built = conform_images(built, request.image_size, request.channels or 1)
        prefixed = tuple(f"{name}{SEPARATOR}{c}" for c in built.names)
        parts.append(ClassDataset(built.data, built.offsets, prefixed, name))
    merged, _ = merge_by_name(parts)
    return ClassDataset(merged.data, merged.offsets, merged.names, "+".join(names) + f"-{request.part}")
