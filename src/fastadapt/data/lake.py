"""Lake et al.'s (2015) 20 official one-shot classification runs (``all_runs.zip`` of brendenlake/omniglot, MIT) as
a test-only task source: run ``i`` is the fixed evaluation episode ``i - 1``."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from fastadapt.core.episodes import TaskBatch
from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset, conform_images
from fastadapt.data.originals import MAX_IMAGE_BYTES, download_file, file_digest

OFFICIAL_URL = (
    "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/one-shot-classification/all_runs.zip"
)
SHA256 = "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"  # all_runs.zip, 352,787 bytes
CONTENT_SHA256 = (
    "52f7540c7c23e8f27245cd65be0a9982d778d10473b35aee560b5740a8437699"  # the extracted files: content_digest
)
RUNS, WAYS = 20, 20  # 20 runs, each a 20-way 1-shot task with 1 query a class
MAX_TOTAL_BYTES = 16 << 20  # the most the runs may extract to; the official ones are < 1 MiB


def _read_zip(path: Path) -> dict[str, bytes]:
    """Every file of the archive (no directories), refusing entries past :data:`MAX_IMAGE_BYTES`."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable zip archive ({e}); use the official all_runs.zip") from None
    files: dict[str, bytes] = {}
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if sum(i.file_size for i in infos) > MAX_TOTAL_BYTES or any(i.file_size > MAX_IMAGE_BYTES for i in infos):
            raise DataError(f"{path} holds more than the runs' few hundred kilobytes; use the official all_runs.zip")
        for info in infos:
            try:
                with zf.open(info) as f:
                    data = f.read(MAX_IMAGE_BYTES + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                raise DataError(f"entry {info.filename!r} of {path} cannot be read ({e}); download it again") from None
            if len(data) > MAX_IMAGE_BYTES:
                raise DataError(f"entry {info.filename!r} of {path} is larger than it claims; use the official archive")
            files[info.filename] = data
    return files


def _read_folder(path: Path) -> dict[str, bytes]:
    """The files of an extracted archive, keyed as in the zip (``runNN/...``): ``path`` holds ``run01``.."""
    base = path / "all_runs" if not (path / "run01").is_dir() and (path / "all_runs" / "run01").is_dir() else path
    files = {}
    for f in sorted(base.glob("run*/**/*")):
        if f.is_file() and not f.is_symlink():
            if f.stat().st_size > MAX_IMAGE_BYTES:
                raise DataError(f"{f} is larger than any file of the official runs; extract all_runs.zip again")
            files[f.relative_to(base).as_posix()] = f.read_bytes()
    return files


def content_digest(files: Mapping[str, bytes]) -> str:
    """SHA-256 over the sorted lines ``<path> <SHA-256 of the file>`` of the runs' files (``runNN/...``): the same
    for the zip and for the folder it extracts to."""
    lines = "".join(
        f"{name} {hashlib.sha256(files[name]).hexdigest()}\n"
        for name in sorted(files)
        if PurePosixPath(name).parts[0].startswith("run")
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def _runs_files(path: Path, sha256: str | None) -> dict[str, bytes]:
    """The verified files: a zip by its own SHA-256 (default :data:`SHA256`), a folder by :func:`content_digest`
    (default :data:`CONTENT_SHA256`); ``sha256`` replaces the expected digest (a re-packed copy, test data)."""
    if path.is_file():
        want = (sha256 or SHA256).lower()
        got = file_digest(path)
        if got != want:
            raise DataError(
                f"SHA-256 of {path} is {got}, expected {want}; it is not the official all_runs.zip (download it with "
                "fastadapt.data.lake.download_lake_runs)"
            )
        return _read_zip(path)
    if path.is_dir():
        files = _read_folder(path)
        want = (sha256 or CONTENT_SHA256).lower()
        got = content_digest(files)
        if got != want:
            raise DataError(
                f"the files under {path} have content digest {got}, expected {want}; they are not the official runs "
                "extracted unchanged (extract all_runs.zip again)"
            )
        return files
    raise DataError(f"{path} not found; give lake-runs:<path of all_runs.zip or of its extracted folder>")


def _image(files: Mapping[str, bytes], name: str) -> np.ndarray:
    """Run image ``name`` as uint8 with ink = 255: the runs are black strokes on white (PNG mode "1"), the bundled
    Omniglot and the originals' loader are ink-bright, so grey levels are inverted (255 - L)."""
    from PIL import Image

    if name not in files:
        raise DataError(f"the runs lack {name}; use the official all_runs.zip")
    try:
        with Image.open(io.BytesIO(files[name])) as im:
            return 255 - np.asarray(im.convert("L"), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{name} of the runs is not a readable image ({e}); use the official all_runs.zip") from None


def _pairing(files: Mapping[str, bytes], run: int) -> list[int]:
    """For run ``run`` (1-based), the test item (1-based) of each training class 1..20, from ``class_labels.txt``."""
    where = f"run{run:02d}/class_labels.txt"
    if where not in files:
        raise DataError(f"the runs lack {where}; use the official all_runs.zip")
    item_of: dict[int, int] = {}
    for line in files[where].decode("ascii", "replace").splitlines():
        if not line.strip():
            continue
        parts = line.split()
        test, train = (PurePosixPath(p).stem for p in parts) if len(parts) == 2 else ("", "")
        if not (test.startswith("item") and train.startswith("class") and test[4:].isdigit() and train[5:].isdigit()):
            raise DataError(f"{where}: line {line.strip()!r} is not '<test item> <training class>'")
        item_of[int(train[5:])] = int(test[4:])
    if sorted(item_of) != list(range(1, WAYS + 1)) or sorted(item_of.values()) != list(range(1, WAYS + 1)):
        raise DataError(f"{where} does not pair each of the {WAYS} test items with one of the {WAYS} training classes")
    return [item_of[c] for c in range(1, WAYS + 1)]


def load_lake_runs(path: str | Path, sha256: str | None = None) -> tuple[ClassDataset, list[list[int]]]:
    """The 20 official runs, verified (:func:`_runs_files`), as a :class:`ClassDataset` of 400 classes of 2 uint8
    ``[1, H, W]`` images (ink bright; 105x105 for the official runs): class ``20 r + c`` is run ``r + 1``'s training
    class ``c + 1`` (name ``runRR/classCC``), its example 0 the training drawing ``training/classCC.png`` and example
    1 the test drawing ``class_labels.txt`` pairs with it. Also returns, per run, the test item of each class."""
    path = Path(path)
    files = _runs_files(path, sha256)
    images, names, items = [], [], []
    for r in range(1, RUNS + 1):
        item = _pairing(files, r)
        for c in range(1, WAYS + 1):
            images += [_image(files, f"run{r:02d}/training/class{c:02d}.png")]
            images += [_image(files, f"run{r:02d}/test/item{item[c - 1]:02d}.png")]
            names.append(f"run{r:02d}/class{c:02d}")
        items.append(item)
    if len({im.shape for im in images}) != 1:
        raise DataError(f"the images of {path} differ in size; use the official all_runs.zip")
    data = torch.from_numpy(np.stack(images)[:, None].copy())
    offsets = torch.arange(0, len(images) + 1, 2, dtype=torch.long)
    return ClassDataset(data, offsets, tuple(names), "lake-runs"), items


def download_lake_runs(root: str | Path, url: str = OFFICIAL_URL, sha256: str = SHA256) -> Path:
    """``root/all_runs.zip``, downloaded from ``url`` (the official raw file) unless present, its SHA-256 checked
    (a file already there is checked too)."""
    target = Path(root) / "all_runs.zip"
    if target.is_file():
        got = file_digest(target)
        if got != sha256:
            raise DataError(f"SHA-256 of {target} is {got}, expected {sha256}; delete it and download again")
        return target
    return download_file(url, target, sha256=sha256)


class LakeRuns:
    """The runs as a task source: ``ways`` = 20, ``shots`` = ``queries`` = 1; task ``i`` (any step) is run
    ``i + 1``: support = its 20 training drawings (label ``c`` = ``training/class{c+1:02d}.png``), queries = its 20
    test drawings in the same class order (the ``class_labels.txt`` pairing), both ``[T, 20, C, H, W]`` float in
    [0, 1]. ``fixed(n)`` gives runs 1..n; more than 20 is an error."""

    ways, shots, queries = WAYS, 1, 1
    one_task_per_batch = False

    def __init__(self, dataset: ClassDataset, items: list[list[int]]) -> None:
        if dataset.num_classes != RUNS * WAYS or not bool((dataset.counts == 2).all()):
            raise DataError(f"{dataset.name}: expected {RUNS * WAYS} classes of 2 drawings (load_lake_runs)")
        self.dataset, self.items, self.seed, self.step = dataset, items, 0, 0

    def sample_tasks(self, step: int, start: int, num_tasks: int) -> TaskBatch:
        """Runs ``start + 1 .. start + num_tasks`` (``step`` does not matter: the runs are fixed)."""
        if num_tasks < 1 or start < 0 or start + num_tasks > RUNS:
            raise DataError(
                f"tasks {start}..{start + num_tasks - 1} asked of Lake's runs; there are {RUNS} (tasks 0..{RUNS - 1}): "
                f"set eval.test_episodes <= {RUNS}"
            )
        x = self.dataset.data.view(RUNS, WAYS, 2, *self.dataset.example_shape)[start : start + num_tasks]
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x
        labels = torch.arange(WAYS).repeat(num_tasks, 1)
        classes = torch.arange(start * WAYS, (start + num_tasks) * WAYS).view(num_tasks, WAYS)
        return TaskBatch(x[:, :, 0].contiguous(), labels, x[:, :, 1].contiguous(), labels.clone(), classes)

    def fixed(self, num_episodes: int, batch_size: int = 100) -> Iterator[TaskBatch]:
        """Runs ``1..num_episodes`` in batches of ``batch_size``."""
        if num_episodes > RUNS:
            raise DataError(
                f"{num_episodes} episodes asked of Lake's {RUNS} official runs; set eval.test_episodes={RUNS}"
            )
        for start in range(0, num_episodes, batch_size):
            yield self.sample_tasks(-1, start, min(batch_size, num_episodes - start))

    def sample(self, num_tasks: int) -> TaskBatch:
        batch = self.sample_tasks(self.step, 0, num_tasks)
        self.step += 1
        return batch


def lake_runs(request: Any) -> LakeRuns:
    """``lake-runs:<path>``: the official runs (zip or extracted folder) as 20 test episodes, converted to
    ``data.image_size`` and ``data.channels`` by the one rule; ``data.options.sha256``: another expected digest
    (a re-packed copy; as a run's test source: ``data.test_options.sha256``). Part ``test`` only: the runs test
    models that were selected on the background alphabets."""
    options = dict(request.options)
    sha256 = options.pop("sha256", None)
    if options:
        raise DataError(f"data.options.{next(iter(options))} is not an option of lake-runs; it takes sha256")
    if request.part != "test" or request.role != "test":
        raise DataError(
            f"lake-runs serves part 'test' to test episodes only (asked: part {request.part!r} for {request.role}): "
            "Lake's runs are a test set, select models on the background alphabets (e.g. omniglot, split lake, "
            "part background_val)"
        )
    if (request.ways, request.shots, request.queries) != (WAYS, 1, 1):
        raise DataError(
            f"Lake's runs are 20-way 1-shot 1-query tasks, asked {request.ways}-way {request.shots}-shot "
            f"{request.queries}-query: set data.test_ways=20 data.test_shots=1 data.test_queries=1"
        )
    if not request.argument:
        raise DataError(
            "data.dataset='lake-runs:' names no file; write lake-runs:<path of all_runs.zip> (get it with "
            "fastadapt.data.lake.download_lake_runs(folder))"
        )
    data, items = load_lake_runs(request.argument, sha256)
    return LakeRuns(conform_images(data, request.image_size, request.channels), items)
