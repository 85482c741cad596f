"""Export a trained model as a serialised, model-code-free predict function, and load it back.

:func:`export` writes ``out_dir`` (by default ``<workdir>/export``)::

    params/              the model variables (orbax StandardCheckpointer: params, batch_stats)
    config.json          the configuration the caller passes (e.g. the experiment flags)
    manifest.json        input names and dtypes, one entry per exported batch budget, platforms,
                         and ``files``: the SHA-256 of every other file of the export
    predict_b{B}_n{N}_p{P}.jax_exported   the jitted predict function, serialised (jax.export)

The predict function is ``predict(variables, boxes, labels, object_mask, pairs, pair_mask,
image_size[, object_features][, images]) -> outputs`` for one fixed budget (B images, N objects,
P pairs), exported with ``jax.export.export(jax.jit(predict))(variables_spec, *input_specs)``:
StableHLO plus the input/output tree structure, so running it needs neither the model code nor
flax.

:func:`load_exported` (also ``sgg_jax.load_exported``) returns a callable over plain arrays. This
module imports only the standard library, numpy, jax and orbax at import time, so the file can be
loaded on its own (e.g. with ``importlib.util.spec_from_file_location``) where sgg_jax is not
installed; only :func:`export` imports sgg_jax.

Loading checks the export before using any of it: the manifest's fields and types, every path it
names (relative, inside the export folder: no absolute path, no ``..``, no link leading out), and
the SHA-256 of every file against ``files`` (a file changed, damaged, missing or not listed is an
:class:`ExportError` naming it). An export written before the checksums were recorded (no
``files``) still loads, with one warning that it is unverified; re-export it to verify it.
:func:`file_checksums` / :func:`verify_checksums` are the same checks for other folders written
with these helpers (e.g. saved scene-graph embedders).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

INPUT_NAMES = ("boxes", "labels", "object_mask", "pairs", "pair_mask", "image_size")
OPTIONAL_INPUT_NAMES = ("object_features", "images")
PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
EXPORT_DIR = "export"
FORMAT = "sgg_jax.export"
FORMAT_VERSION = 1
CHECKSUMS = "files"

_LOG = logging.getLogger(__name__)
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Shape of each input in terms of the budget (B, N, P); "*" keeps the example's size.
_INPUT_SHAPES = {
    "boxes": ("B", "N", 4),
    "labels": ("B", "N"),
    "object_mask": ("B", "N"),
    "pairs": ("B", "P", 2),
    "pair_mask": ("B", "P"),
    "image_size": ("B", 2),
    "object_features": ("B", "N", "*"),
    "images": ("B", "*", "*", "*"),
}


def _function_file(budget: tuple[int, int, int]) -> str:
    batch_size, max_objects, max_pairs = budget
    return f"predict_b{batch_size}_n{max_objects}_p{max_pairs}.jax_exported"


def _input_shape(name: str, example_shape: Sequence[int], budget: tuple[int, int, int]):
    """The shape of input ``name`` for ``budget`` (B, N, P); ``"*"`` axes keep the example's."""
    budget_sizes = dict(zip("BNP", budget, strict=True))
    shape = []
    for axis, dim in enumerate(_INPUT_SHAPES[name]):
        if dim == "*":
            shape.append(int(example_shape[axis]))
        elif isinstance(dim, str):
            shape.append(budget_sizes[dim])
        else:
            shape.append(dim)
    return tuple(shape)


class ExportError(ValueError):
    """An export file or folder cannot be read; one line naming it (``<path>: <reason>``)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def member_path(directory: str, relative: Any, *, named_in: str) -> str:
    """The absolute path of the file or folder ``relative`` of the folder ``directory``.

    Raises:
      ExportError: naming ``named_in`` (the file that names the path) when ``relative`` is not a
        non-empty relative path, has a ``..`` component, or leads out of ``directory`` (links
        included).
    """
    if not isinstance(relative, str) or not relative:
        raise ExportError(named_in, f"path {relative!r} is not a file name")
    parts = relative.replace("\\", "/").split("/")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or ".." in parts:
        raise ExportError(named_in, f"path {relative!r} leads out of the export folder")
    root = os.path.realpath(directory)
    path = os.path.join(root, relative)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ExportError(named_in, f"path {relative!r} leads out of the export folder")
    return path


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(directory: str, member: str) -> list[str]:
    """Relative (``/``-separated) paths of the file ``member`` or of every file under it."""
    path = os.path.join(directory, member)
    if not os.path.isdir(path):
        return [member] if os.path.lexists(path) else []
    found = []
    for root, _, names in os.walk(path):
        for name in names:
            found.append(os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/"))
    return sorted(found)


def file_checksums(directory: str | os.PathLike, members: Sequence[str]) -> dict[str, str]:
    """``{relative path: SHA-256 hex}`` of the files ``members`` of ``directory`` (a folder member
    stands for every file under it)."""
    directory = os.fspath(directory)
    return {
        relative: _sha256(os.path.join(directory, relative))
        for member in members
        for relative in _files_under(directory, member)
    }


def verify_checksums(
    directory: str | os.PathLike, checksums: Any, members: Sequence[str], *, named_in: str
) -> None:
    """Checks the files ``members`` of ``directory`` against :func:`file_checksums`' record.

    Args:
      directory: the folder.
      checksums: the recorded ``{relative path: SHA-256}`` (read from the file ``named_in``).
      members: files and folders that must be covered: every file under them must be recorded.
      named_in: the file holding the record, named by errors about the record itself.

    Raises:
      ExportError: a record that is not a mapping of paths to SHA-256 digests, a path leading
        out of ``directory``, a file missing, a file whose digest differs, or a file of
        ``members`` that is not recorded (each names the file).
    """
    directory = os.fspath(directory)
    if not isinstance(checksums, dict) or not checksums:
        raise ExportError(named_in, f"field '{CHECKSUMS}': must map file names to SHA-256 digests")
    for relative, digest in checksums.items():
        path = member_path(directory, relative, named_in=named_in)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ExportError(named_in, f"field '{CHECKSUMS}': {relative!r} has no SHA-256 digest")
        if not os.path.isfile(path):
            raise ExportError(path, f"missing (listed in {os.path.basename(named_in)})")
        if _sha256(path) != digest:
            raise ExportError(
                path,
                f"SHA-256 differs from {os.path.basename(named_in)}: the file was changed or "
                "damaged after it was written",
            )
    for member in members:
        member_path(directory, member, named_in=named_in)
        for relative in _files_under(directory, member):
            if relative not in checksums:
                raise ExportError(
                    os.path.join(directory, relative),
                    f"not listed in {os.path.basename(named_in)} (added after it was written)",
                )


def save_variables(path: str | os.PathLike, variables: Any) -> None:
    """Writes model variables to the folder ``path`` (orbax ``StandardCheckpointer``).

    Args:
      path: the folder (created; replaced when it exists).
      variables: a pytree of arrays (``{"params": ..., "batch_stats": ...}``); host copies are
        written, whatever their sharding.
    """
    variables = jax.tree.map(_host_copy, variables)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(os.fspath(path)), variables, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()


def restore_variables(path: str | os.PathLike, template: Any = None) -> Any:
    """Reads :func:`save_variables`'s folder.

    Args:
      path: the folder.
      template: optional pytree of ``ShapeDtypeStruct`` (with sharding) to restore onto; None =
        the saved structure on the default device.

    Returns:
      The variables.

    Raises:
      ExportError: the folder is missing or unreadable (names the folder).
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise ExportError(path, "no saved variables (folder missing)")
    checkpointer = ocp.StandardCheckpointer()
    try:
        return checkpointer.restore(path, template)
    except Exception as error:  # orbax / tensorstore raise many types for a broken folder
        raise ExportError(path, f"unreadable saved variables: {_first_line(error)}") from None
    finally:
        checkpointer.close()


def write_exported(path: str | os.PathLike, exported: jax.export.Exported) -> None:
    """Writes a ``jax.export`` function (``exported.serialize()``) to the file ``path``."""
    with open(path, "wb") as handle:
        handle.write(exported.serialize())


def read_exported(path: str | os.PathLike) -> jax.export.Exported:
    """Reads :func:`write_exported`'s file.

    Raises:
      ExportError: the file is missing or not a serialised function (names the file).
    """
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as handle:
            data = bytearray(handle.read())
    except OSError as error:
        raise ExportError(path, f"cannot be read: {error.strerror or error}") from None
    try:
        return jax.export.deserialize(data)
    except Exception as error:  # flatbuffers / MLIR errors of a corrupt file
        raise ExportError(
            path, f"not a serialised jax.export function: {_first_line(error)}"
        ) from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document of the file ``path``; ExportError naming it when missing or malformed."""
    path = os.fspath(path)
    try:
        with open(path) as handle:
            return json.load(handle)
    except OSError as error:
        raise ExportError(path, f"cannot be read: {error.strerror or error}") from None
    except ValueError as error:
        raise ExportError(path, f"not valid JSON: {_first_line(error)}") from None


def _host_copy(leaf: Any) -> np.ndarray:
    """A numpy copy of a (replicated) array leaf."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.asarray(jax.device_get(leaf))


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def export(
    source: Any,
    predict_fn: Callable[[Mapping[str, Any], Any], Any],
    example_inputs: Any,
    config: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    budgets: Sequence[tuple[int, int, int]] | None = None,
    platforms: Sequence[str] | None = None,
) -> str:
    """Serialises ``predict_fn`` and the model variables into ``out_dir``.

    Args:
      source: where the variables come from: a workdir (path; its newest checkpoint), a
        ``TrainState`` (``.variables``) or a variables mapping ``{"params": ..., ...}``.
      predict_fn: ``predict_fn(variables, batch) -> outputs`` where ``batch`` is a
        ``SceneGraphBatch`` built from the inputs (``pair_labels`` 0, ``graph_mask`` =
        any object, ``image_index`` = row, no truncation counts) and ``outputs`` a pytree of
        arrays made of dicts / lists / tuples (e.g. ``model.apply(variables, batch,
        train=False)[0]``).
      example_inputs: a ``SceneGraphBatch`` or a mapping with at least
        ``boxes[B,N,4], labels[B,N], object_mask[B,N], pairs[B,P,2], pair_mask[B,P],
        image_size[B,2]`` (and optionally ``object_features[B,N,D]``, ``images[B,H,W,3]``);
        gives the dtypes and, unless ``budgets`` is given, the one budget (B, N, P).
      config: JSON-able configuration written to ``config.json``.
      out_dir: output folder; None = ``<source>/export`` when ``source`` is a workdir.
      budgets: the (B, N, P) budgets to export, one function each; None = the example's.
      platforms: lowering platforms (e.g. ``("cpu", "cuda")``); None = the current backend.

    Returns:
      The export folder.
    """
    from sgg_jax.errors import ConfigError
    from sgg_jax.structures import SceneGraphBatch
    from sgg_jax.train.checkpoint import Checkpointer, jsonable, write_json

    if isinstance(source, str | os.PathLike):
        workdir = os.fspath(source)
        with Checkpointer(workdir, read_only=True) as checkpointer:
            if checkpointer.latest_step() is None:
                raise ConfigError("source", f"{workdir} holds no checkpoint to export")
            reference = checkpointer.external_reference()
            if reference is not None:
                raise ConfigError(
                    "source",
                    f"the checkpoints of {workdir} leave out the frozen variables under "
                    f"{'/'.join(reference['path'])} (source {reference['source']}): export the "
                    "trained state instead (its variables are whole)",
                )
            variables = checkpointer.restore_variables()
        if out_dir is None:
            out_dir = os.path.join(workdir, EXPORT_DIR)
    elif hasattr(source, "variables") and hasattr(source, "opt_state"):
        variables = source.variables
    elif isinstance(source, Mapping) and "params" in source:
        variables = dict(source)
    else:
        raise ConfigError(
            "source", f"expected a workdir, a TrainState or variables, got {type(source).__name__}"
        )
    if out_dir is None:
        raise ConfigError("out_dir", "is required unless exporting from a workdir")
    out_dir = os.path.abspath(os.fspath(out_dir))

    inputs = _inputs_of(example_inputs)
    missing = [name for name in INPUT_NAMES if inputs.get(name) is None]
    if missing:
        raise ConfigError("example_inputs", f"missing inputs {missing}")
    names = list(INPUT_NAMES) + [n for n in OPTIONAL_INPUT_NAMES if inputs.get(n) is not None]
    inputs = {name: np.asarray(inputs[name]) for name in names}
    example_budget = (
        int(inputs["boxes"].shape[0]),
        int(inputs["boxes"].shape[1]),
        int(inputs["pairs"].shape[1]),
    )
    budgets = [example_budget] if budgets is None else [tuple(map(int, b)) for b in budgets]
    if not budgets:
        raise ConfigError("budgets", "at least one (B, N, P) budget is needed")
    for budget in budgets:
        if len(budget) != 3 or min(budget) < 1:
            raise ConfigError("budgets", f"each budget is (B, N, P) >= 1, got {budget}")
    if len(set(budgets)) != len(budgets):
        raise ConfigError("budgets", f"duplicate budgets in {budgets}")

    variables = jax.tree.map(_host_copy, dict(variables))
    variables_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)

    def predict_from_arrays(model_variables, *arrays):
        named = dict(zip(names, arrays, strict=True))
        batch_size, max_pairs = named["pairs"].shape[:2]
        batch = SceneGraphBatch(
            boxes=named["boxes"],
            labels=named["labels"],
            object_mask=named["object_mask"],
            pairs=named["pairs"],
            pair_labels=jnp.zeros((batch_size, max_pairs), jnp.int32),
            pair_mask=named["pair_mask"],
            image_size=named["image_size"],
            graph_mask=named["object_mask"].any(axis=-1),
            image_index=jnp.arange(batch_size, dtype=jnp.int32),
            num_truncated_objects=jnp.zeros((batch_size,), jnp.int32),
            num_truncated_pairs=jnp.zeros((batch_size,), jnp.int32),
            images=named.get("images"),
            object_features=named.get("object_features"),
        )
        return predict_fn(model_variables, batch)

    jitted = jax.jit(predict_from_arrays)
    os.makedirs(out_dir, exist_ok=True)
    functions, lowered_platforms = [], []
    for budget in budgets:
        input_specs = [
            jax.ShapeDtypeStruct(_input_shape(name, inputs[name].shape, budget), inputs[name].dtype)
            for name in names
        ]
        exported = jax.export.export(jitted, platforms=platforms)(variables_spec, *input_specs)
        file_name = _function_file(budget)
        if jax.process_index() == 0:
            write_exported(os.path.join(out_dir, file_name), exported)
        functions.append(
            {
                "file": file_name,
                "batch_size": budget[0],
                "max_objects": budget[1],
                "max_pairs": budget[2],
            }
        )
        lowered_platforms = list(exported.platforms)

    save_variables(os.path.join(out_dir, PARAMS_DIR), variables)

    if jax.process_index() == 0:
        write_json(os.path.join(out_dir, CONFIG_FILE), jsonable(dict(config or {})))
        members = [entry["file"] for entry in functions] + [PARAMS_DIR, CONFIG_FILE]
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "inputs": names,
            "input_dtypes": {name: inputs[name].dtype.name for name in names},
            "input_shapes": {
                name: [d if isinstance(d, int) else str(d) for d in _INPUT_SHAPES[name]]
                for name in names
            },
            "functions": functions,
            "platforms": lowered_platforms,
            "params": PARAMS_DIR,
            "jax_version": jax.__version__,
            CHECKSUMS: file_checksums(out_dir, members),
        }
        write_json(os.path.join(out_dir, MANIFEST_FILE), manifest)
    return out_dir


def _inputs_of(value: Any) -> dict[str, Any]:
    """Named inputs of a mapping or of an object with input attributes (a SceneGraphBatch)."""
    if isinstance(value, Mapping):
        return dict(value)
    return {
        name: getattr(value, name)
        for name in INPUT_NAMES + OPTIONAL_INPUT_NAMES
        if getattr(value, name, None) is not None
    }


# ----------------------------------------------------------------------------------------------
# Loading (standalone: no sgg_jax, no flax)
# ----------------------------------------------------------------------------------------------


def _check_manifest(manifest: dict, manifest_path: str) -> list[tuple[int, int, int]]:
    """Checks the fields of a manifest; returns the budgets of its functions.

    Raises:
      ExportError: naming the manifest and the field that is missing or of the wrong type.
    """

    def bad(field: str, reason: str) -> ExportError:
        return ExportError(manifest_path, f"field '{field}': {reason}")

    for field in ("inputs", "input_dtypes", "functions", "params"):
        if field not in manifest:
            raise bad(field, "missing")
    inputs = manifest["inputs"]
    known = INPUT_NAMES + OPTIONAL_INPUT_NAMES
    if not isinstance(inputs, list) or any(name not in known for name in inputs):
        raise bad("inputs", f"must list input names of {list(known)}, got {inputs!r}")
    missing = [name for name in INPUT_NAMES if name not in inputs]
    if missing or len(set(inputs)) != len(inputs):
        raise bad("inputs", f"must list each of {list(INPUT_NAMES)} once, got {inputs!r}")
    dtypes = manifest["input_dtypes"]
    if not isinstance(dtypes, dict) or set(dtypes) != set(inputs):
        raise bad("input_dtypes", "must give the dtype of every input")
    for name, dtype in dtypes.items():
        try:
            np.dtype(dtype)
        except TypeError:
            raise bad("input_dtypes", f"{name}: not a dtype: {dtype!r}") from None
    functions = manifest["functions"]
    if not isinstance(functions, list) or not functions:
        raise bad("functions", "must list at least one exported function")
    budgets = []
    for index, entry in enumerate(functions):
        keys = ("batch_size", "max_objects", "max_pairs")
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise bad(f"functions[{index}]", "must be an object with a 'file'")
        sizes = [entry.get(key) for key in keys]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
            raise bad(f"functions[{index}]", f"{', '.join(keys)} must be positive integers")
        budgets.append(tuple(sizes))
    if len(set(budgets)) != len(budgets):
        raise bad("functions", "the same budget is exported twice")
    if not isinstance(manifest["params"], str):
        raise bad("params", f"must be a folder name, got {manifest['params']!r}")
    return budgets


class ExportedPredictor:
    """A loaded export: call it with the input arrays of one exported budget.

    Accepted call forms: positional arrays in ``input_names`` order, keyword arrays, or one
    mapping / object with attributes named like the inputs (e.g. a ``SceneGraphBatch``); extra
    keys are ignored. Inputs are cast to the exported dtypes; shapes must match a budget exactly.

    Attributes:
      path: the export folder.
      config: the contents of ``config.json``.
      manifest: the contents of ``manifest.json``.
      input_names: the input order of positional calls.
      budgets: the exported (B, N, P) budgets.
      variables: the restored model variables (on the first local device).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        manifest_path = os.path.join(self.path, MANIFEST_FILE)
        try:
            self._load(manifest_path)
        except ExportError:
            raise
        except Exception as error:  # anything the checks above did not foresee: still one line
            raise ExportError(
                self.path, f"unreadable export: {type(error).__name__}: {_first_line(error)}"
            ) from None

    def _load(self, manifest_path: str) -> None:
        if not os.path.isdir(self.path):
            raise ExportError(self.path, "no export (folder missing)")
        self.manifest = read_json(manifest_path)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise ExportError(self.path, f"not an sgg_jax export (no '{FORMAT}' manifest)")
        version = self.manifest.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ExportError(manifest_path, f"field 'version': not an integer: {version!r}")
        if version > FORMAT_VERSION:
            raise ExportError(
                self.path,
                f"export format version {self.manifest['version']} is newer than this loader's "
                f"{FORMAT_VERSION}",
            )
        budgets = _check_manifest(self.manifest, manifest_path)
        function_paths = [
            member_path(self.path, entry["file"], named_in=manifest_path)
            for entry in self.manifest["functions"]
        ]
        params_path = member_path(self.path, self.manifest["params"], named_in=manifest_path)
        members = [entry["file"] for entry in self.manifest["functions"]]
        members += [self.manifest["params"], CONFIG_FILE]
        if CHECKSUMS in self.manifest:
            verify_checksums(self.path, self.manifest[CHECKSUMS], members, named_in=manifest_path)
        else:
            _LOG.warning(
                "%s: export written without checksums; loaded unverified (export it again to "
                "verify it)",
                self.path,
            )
        self.config = read_json(os.path.join(self.path, CONFIG_FILE))
        self.input_names = tuple(self.manifest["inputs"])
        self._dtypes = {name: np.dtype(d) for name, d in self.manifest["input_dtypes"].items()}
        self._functions = {}
        variables_template = None
        for budget, function_path in zip(budgets, function_paths, strict=True):
            exported = read_exported(function_path)
            if len(exported.in_avals) <= len(self.input_names):
                raise ExportError(function_path, "not a predict function of this manifest")
            if variables_template is None:
                (arguments, _) = jax.tree.unflatten(exported.in_tree, exported.in_avals)
                variables_template = arguments[0]
            self._functions[budget] = (exported, jax.jit(exported.call))
        self.budgets = tuple(self._functions)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda aval: jax.ShapeDtypeStruct(aval.shape, aval.dtype, sharding=device),
            variables_template,
        )
        self.variables = restore_variables(params_path, target)

    def _arrays(self, args: tuple, kwargs: dict) -> list[np.ndarray]:
        if len(args) == 1 and not kwargs and not hasattr(args[0], "shape"):
            named = _inputs_of(args[0])
        elif args and kwargs:
            raise TypeError("pass the inputs positionally, by keyword or as one mapping")
        elif args:
            if len(args) != len(self.input_names):
                raise TypeError(f"expected {len(self.input_names)} inputs {self.input_names}")
            named = dict(zip(self.input_names, args, strict=True))
        else:
            named = kwargs
        missing = [name for name in self.input_names if named.get(name) is None]
        if missing:
            raise ValueError(f"{self.path}: missing inputs {missing}")
        return [np.asarray(named[name], self._dtypes[name]) for name in self.input_names]

    def __call__(self, *args, **kwargs) -> Any:
        """Runs the exported predict function.

        Returns:
          The outputs of the exported ``predict_fn`` (same pytree, jax arrays).
        """
        arrays = self._arrays(args, kwargs)
        named = dict(zip(self.input_names, arrays, strict=True))
        budget = (
            int(named["boxes"].shape[0]),
            int(named["boxes"].shape[1]),
            int(named["pairs"].shape[1]),
        )
        if budget not in self._functions:
            raise ValueError(
                f"{self.path}: inputs of budget (B, N, P) = {budget}; exported budgets are "
                f"{list(self.budgets)}"
            )
        exported, call = self._functions[budget]
        for name, array, aval in zip(
            self.input_names, arrays, exported.in_avals[-len(arrays) :], strict=True
        ):
            if array.shape != aval.shape:
                raise ValueError(
                    f"{self.path}: input '{name}' has shape {array.shape}, expected {aval.shape}"
                )
        return call(self.variables, *arrays)


def load_exported(path: str | os.PathLike) -> ExportedPredictor:
    """Loads an export written by :func:`export`.

    Args:
      path: the export folder (``<workdir>/export``).

    Returns:
      An :class:`ExportedPredictor`: ``predictor(boxes, labels, object_mask, pairs, pair_mask,
      image_size)`` (or keywords, or one mapping of them) returns the predict outputs, e.g.
      ``{"relation_logits": f32[B,P,C], "object_labels": i32[B,N], "object_scores": f32[B,N]}``.

    Raises:
      ExportError: one line naming the file that is missing, malformed, outside the folder or
        whose SHA-256 differs from the manifest's (see the module docstring).
    """
    return ExportedPredictor(path)
