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


def domain_sizes(data: ClassDataset) -> list[int] | None:
    """The class count of each domain of ``data`` in class-id order, when its classes are named
    ``<domain>:<class>`` with each domain one block of class ids (as :func:`mixed_domains` gives them); else None."""
    if not all(SEPARATOR in n for n in data.names):
        return None
    sizes: list[int] = []
    seen: list[str] = []
    for name in data.names:
        domain = domain_of(name)
        if seen and seen[-1] == domain:
            sizes[-1] += 1
        elif domain in seen:  # a domain in two blocks: no per-domain layout
            return None
        else:
            seen.append(domain)
            sizes.append(1)
    return sizes


def domain_request(request: Any, name: str) -> Any:
    """The request one domain of a ``domains`` source gets: its own table of ``data.options`` (``{}`` when it has
    none) less two keys read here, ``split`` (its ``data.split``) and ``parts`` (its own part name for each part asked
    for; a part not in the table is asked for by its own name). A held-out domain tested with ``data.test_dataset``
    is asked this way too, so it sees the options the run gave it."""
    own = request.options.get(name, {})
    if not isinstance(own, dict):
        raise DataError(f"data.options.{name} must be a table of that domain's options, e.g. {{ size = 28 }}")
    own = dict(own)
    split, part_names = own.pop("split", request.split), own.pop("parts", {})
    if (
        not isinstance(split, str)
        or not isinstance(part_names, dict)
        or not all(isinstance(v, str) for v in part_names.values())
    ):
        raise DataError(
            f"data.options.{name}: split must be a string and parts a table of part names, e.g. "
            '{ split = "lake", parts = { train = "background_train" } }'
        )
    part = part_names.get(request.part, request.part)
    return dataclasses.replace(request, options=own, argument="", split=split, part=part)


def mixed_domains(request: Any) -> ClassDataset:
    """The classes of every domain in ``data.options.domains`` (registered task sources that give a
    :class:`ClassDataset` for ``request.part``), each converted to ``data.image_size`` and ``data.channels`` by
    the one conversion rule. ``data.options.<domain> = { ... }`` passes a domain its own options, except two keys
    read here: ``split`` (that domain's ``data.split``) and ``parts`` (a table naming that domain's own part for each
    part asked for, e.g. Omniglot's Lake split: ``omniglot = { split = "lake", parts = { train = "background_train",
    val = "background_val", test = "evaluation" } }``; a part not in the table is asked for by its own name)."""
    options = dict(request.options)
    names = options.pop("domains", list(DEFAULT_DOMAINS))
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise DataError(f'data.options.domains={names!r}: name two or more task sources, e.g. ["omniglot", "kanji"]')
    if len(set(names)) != len(names) or "domains" in names:
        raise DataError(f"data.options.domains={names!r}: each domain once, and not domains itself")
    unknown = sorted(k for k in options if k not in names and k not in TASK_SOURCES)  # a held-out domain may have one
    if unknown:
        raise DataError(
            f"data.options.{unknown[0]} is neither a domain of data.options.domains ({', '.join(names)}) nor a task "
            "source"
        )
    parts = []
    for name in names:
        if name not in TASK_SOURCES:
            raise DataError(f"data.options.domains: {name!r} is not a task source; see fastadapt list")
        built = TASK_SOURCES.get(name)(domain_request(request, name))
        if not isinstance(built, ClassDataset):
            raise DataError(f"domain {name!r} gives {type(built).__name__}, not classes of images; it cannot be mixed")
        built = conform_images(built, request.image_size, request.channels or 1)
        prefixed = tuple(f"{name}{SEPARATOR}{c}" for c in built.names)
        parts.append(ClassDataset(built.data, built.offsets, prefixed, name))
    merged, _ = merge_by_name(parts)
    return ClassDataset(merged.data, merged.offsets, merged.names, "+".join(names) + f"-{request.part}")
