"""Checkpoints of the training state in ``<workdir>/checkpoints`` (orbax ``CheckpointManager``).

Each checkpoint is a step folder holding two items: ``state`` (the :class:`TrainState` pytree,
saved with orbax's PyTree handler, every array at its sharding) and ``config`` (the run's
configuration as JSON), so a checkpoint always says how it was made. ``<workdir>/config.json`` holds
the configuration of the latest run as well.

* Saves are asynchronous: the arrays are copied off the devices and the train loop goes on while
  they are written; :meth:`Checkpointer.wait_until_finished` (called by :meth:`close`) blocks until
  every save is on disk. A checkpoint becomes visible only once complete (orbax commits a step
  folder atomically), so a run killed mid-save resumes from the previous one.
* ``save_every`` and the final step decide when to save; the oldest checkpoints beyond
  ``max_to_keep`` are deleted.
* :meth:`Checkpointer.restore_latest` restores the newest step onto the shardings of a template
  state (e.g. replicated on the current mesh), whatever mesh the checkpoint was written from.

Broken checkpoints. A step folder that cannot be read (a truncated data file or ``_METADATA``, a
missing file) is named in one warning and skipped: the run resumes from the newest intact
checkpoint, and stops with one :class:`~sgg_jax.errors.DataError` naming the checkpoint folder
when none is intact. A broken folder is never deleted nor written over: a save due at its step is
skipped with a warning (the run goes on and saves its later steps), so the folder stays as it was
found until the user moves it away.

Frozen variables left out (:class:`ExternalVariables`). Variables that never change during a run
and come from a file (a frozen pretrained detector: ~570 MB at Scene-Graph-Benchmark size) need not
be copied into every checkpoint. With ``external``, the subtree at ``path`` of every variable
collection (``params/<path>``, ``<collection>/<path>``) is left out of the saved state (frozen
parameters have no optimizer state: ``optax.masked`` stores none), and the checkpoint's
``external`` item records the source and a sha256 digest of the left-out arrays
(:func:`tree_digest`). Restoring takes the subtree from the template state (built afresh from the
source) after checking its digest: a source that changed, or a template without it, is one
:class:`~sgg_jax.errors.DataError` naming the source, never silently used. The first save also
checks that the subtree still has the digest it started with (a subtree that trains is refused).
Checkpoints written without ``external`` (the whole state) still restore.

Changed configuration. A run resumed with another configuration than the one stored with its
newest intact checkpoint stops with one :class:`~sgg_jax.errors.ConfigError` naming the differing
keys, before anything is written, unless ``allow_config_change``: then the old configuration is
appended to ``<workdir>/config_history.jsonl`` (``{"step", "changed", "config"}``) and
``config.json`` holds the new one. Keys that do not change what is trained may differ freely:
:data:`OPERATIONAL_KEYS` (the workdir path, the progress bar, logging, evaluation and checkpoint
cadence) anywhere in the configuration, and ``num_steps`` when it grows (a run extended).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sgg_jax.errors import ConfigError, DataError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
# Configuration keys (the last component of a dotted key) that may differ on resume: they change
# where and how a run reports, not what it trains.
OPERATIONAL_KEYS = frozenset(
    {
        "workdir",
        "progress",
        "async_checkpointing",
        "checkpoint_every",
        "keep_checkpoints",
        "max_to_keep",
        "log_every",
        "eval_every",
    }
)
STATE_ITEM = "state"
CONFIG_ITEM = "config"
EXTERNAL_ITEM = "external"

_LOG = logging.getLogger(__name__)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (dataclasses → dicts, tuples → lists, numpy → Python)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ConfigError("config", f"value {value!r} of type {type(value).__name__} is not JSON")


def abstract_like(tree: Any) -> Any:
    """``ShapeDtypeStruct`` (with sharding) of every array leaf of ``tree``: a restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def write_json(path: str | os.PathLike, document: Any) -> None:
    """Writes ``document`` as indented JSON (atomically: temporary file, then rename)."""
    temporary = f"{os.fspath(path)}.tmp"
    with open(temporary, "w") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)


@dataclasses.dataclass(frozen=True)
class ExternalVariables:
    """A frozen subtree of the variables that checkpoints leave out (see the module docstring).

    Attributes:
      path: the subtree's keys inside every variable collection, e.g. ``("features",
        "detector")``.
      source: JSON-able record of where the values come from (stored in every checkpoint),
        e.g. ``{"detector_checkpoint": "/x/model_final.pth", "detector_checkpoint_sha256": ...}``.
      name: the file or folder named in errors.
    """

    path: tuple[str, ...]
    source: Mapping[str, Any]
    name: str

    def __post_init__(self):
        if not self.path or not all(isinstance(key, str) and key for key in self.path):
            raise ConfigError("external_variables", f"path must be keys, got {self.path!r}")
        object.__setattr__(self, "path", tuple(self.path))


class SourceMismatchError(DataError):
    """The source of left-out variables is not the one a checkpoint was trained with."""


def _split_subtree(tree: Mapping[str, Any], path: tuple[str, ...]) -> tuple[dict, Any]:
    """``(tree without tree[path], tree[path] or None)``, copying only the dicts on the way."""
    tree = dict(tree)
    head, rest = path[0], path[1:]
    if head not in tree:
        return tree, None
    if not rest:
        return tree, tree.pop(head)
    if not isinstance(tree[head], Mapping):
        return tree, None
    inner, found = _split_subtree(tree[head], rest)
    tree[head] = inner
    return tree, found


def _put_subtree(tree: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict:
    tree = dict(tree)
    if len(path) == 1:
        tree[path[0]] = value
    else:
        tree[path[0]] = _put_subtree(tree.get(path[0], {}), path[1:], value)
    return tree


def split_external(state: Any, path: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """``(state without the subtree at path of every collection, {collection: subtree})``."""
    params, found = _split_subtree(state.params, path)
    parts = {} if found is None else {"params": found}
    collections = {}
    for name, collection in state.collections.items():
        collections[name], found = _split_subtree(collection, path)
        if found is not None:
            parts[name] = found
    return state.replace(params=params, collections=collections), parts


def merge_external(state: Any, path: tuple[str, ...], parts: Mapping[str, Any]) -> Any:
    """The inverse of :func:`split_external`."""
    params, collections = state.params, dict(state.collections)
    for name, subtree in parts.items():
        if name == "params":
            params = _put_subtree(params, path, subtree)
        else:
            collections[name] = _put_subtree(collections.get(name, {}), path, subtree)
    return state.replace(params=params, collections=collections)


def tree_digest(tree: Any) -> str:
    """sha256 over every array leaf of ``tree``: its path, dtype, shape and bytes (host copy)."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)  # a replicated array: every copy is the same
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current))
        out = []
        for key in keys:
            out += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == current else [prefix.rstrip(".")]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _leaf(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The dotted keys where ``current`` differs from ``saved`` in a way that changes what is
    trained: every difference except :data:`OPERATIONAL_KEYS` and a ``num_steps`` that grows."""
    changed = []
    for key in _differences(dict(saved), dict(current)):
        name = key.rsplit(".", 1)[-1]
        if name in OPERATIONAL_KEYS:
            continue
        if name == "num_steps":
            old, new = _leaf(saved, key), _leaf(current, key)
            if isinstance(old, int) and isinstance(new, int) and new >= old:
                continue
        changed.append(key)
    return changed


class Checkpointer:
    """Saves and restores :class:`TrainState` in ``<workdir>/checkpoints``.

    Args:
      workdir: the run's folder.
      save_every: save when ``step % save_every == 0`` (and always at the final step, see
        :meth:`maybe_save`); 0 = only at the end.
      max_to_keep: newest checkpoints kept; None = all.
      async_save: write checkpoints in the background.
      config: the run's configuration (JSON-able), stored with every checkpoint and in
        ``<workdir>/config.json``.
      read_only: only read checkpoints (nothing is created, saved or deleted).
      allow_config_change: resume even when ``config`` differs from the configuration stored with
        the newest intact checkpoint (see the module docstring); False = a
        :class:`~sgg_jax.errors.ConfigError` naming the differing keys.
      external: a frozen subtree left out of the saved states (:class:`ExternalVariables`);
        restores take it from the template.

    Raises:
      ConfigError: ``config`` differs from the stored one and not ``allow_config_change``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        save_every: int = 1000,
        max_to_keep: int | None = 3,
        async_save: bool = True,
        config: Mapping[str, Any] | None = None,
        read_only: bool = False,
        allow_config_change: bool = False,
        external: ExternalVariables | None = None,
    ):
        if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
            raise ConfigError("checkpoint_every", f"must be an integer >= 0, got {save_every!r}")
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ConfigError(
                "max_to_keep", f"must be a positive integer or None, got {max_to_keep!r}"
            )
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
        self.save_every = save_every
        self.config = jsonable(dict(config or {}))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                STATE_ITEM: ocp.PyTreeCheckpointHandler(),
                CONFIG_ITEM: ocp.JsonCheckpointHandler(),
                EXTERNAL_ITEM: ocp.JsonCheckpointHandler(),
            },
        )
        self.external = external
        self._external_digest: str | None = None  # of the subtree this run started with
        self._external_checked = False
        self.broken_steps: set[int] = set()
        if config is not None and not read_only:
            try:
                self._record_config(allow_config_change)
            except BaseException:
                self.manager.close()
                raise

    def _record_config(self, allow_config_change: bool) -> None:
        """Checks ``self.config`` against the newest intact checkpoint's, then writes it."""
        saved = None
        for step in reversed(self.steps):
            try:
                saved, saved_step = self.restore_config(step), step
                break
            except Exception:  # a broken step: its state is reported when it is restored
                continue
        changed = [] if saved is None else config_changes(saved, self.config)
        if changed and not allow_config_change:
            raise ConfigError(
                "allow_config_change",
                f"{self.workdir} was trained to step {saved_step} with another configuration "
                f"(differing: {', '.join(changed)}); rerun with the same settings, use another "
                "workdir, or allow the change (--allow_config_change) to record it",
            )
        if jax.process_index() != 0:
            return
        if changed:
            _LOG.warning(
                "%s: configuration changed on resume (%s); the old one is appended to %s",
                self.workdir,
                ", ".join(changed),
                CONFIG_HISTORY_FILE,
            )
            record = {"step": saved_step, "changed": changed, "config": saved}
            with open(os.path.join(self.workdir, CONFIG_HISTORY_FILE), "a") as handle:
                handle.write(json.dumps(record) + "\n")
        write_json(os.path.join(self.workdir, CONFIG_FILE), self.config)

    # -- saving --------------------------------------------------------------------------------

    def save(self, step: int, state: Any) -> bool:
        """Saves ``state`` as checkpoint ``step`` (asynchronously); False if it already exists.

        A step found broken by :meth:`restore_latest` is kept as it is: nothing is saved over it
        (a warning names the folder) and False is returned.
        """
        step = int(step)
        if step in self.broken_steps:
            _LOG.warning(
                "%s is broken and kept as it is: step %d is not saved (move the folder away to "
                "let it be saved)",
                self.step_directory(step),
                step,
            )
            return False
        if step in self.manager.all_steps():
            return False
        items = {CONFIG_ITEM: ocp.args.JsonSave(self.config)}
        if self.external is not None:
            state, record = self._leave_out_external(state)
            items[EXTERNAL_ITEM] = ocp.args.JsonSave(record)
        items[STATE_ITEM] = ocp.args.PyTreeSave(state)
        return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=True))

    def _leave_out_external(self, state: Any) -> tuple[Any, dict[str, Any]]:
        """The state without the external subtree, and the record saved in its place."""
        path = self.external.path
        state, parts = split_external(state, path)
        if not self._external_checked:  # once per run: the subtree must not have trained
            digest = tree_digest(parts)
            if self._external_digest is None:
                self._external_digest = digest
            elif digest != self._external_digest:
                raise ConfigError(
                    "external_variables",
                    f"the variables under {'/'.join(path)} changed during training, so they "
                    f"cannot be left out of checkpoints (they are not frozen; source "
                    f"{self.external.name})",
                )
            self._external_checked = True
        record = {
            "path": list(path),
            "source": jsonable(dict(self.external.source)),
            "digest": self._external_digest,
        }
        return state, record

    def maybe_save(self, step: int, state: Any, *, final: bool = False) -> bool:
        """Saves when ``step`` is a multiple of ``save_every`` or ``final``; True if it saved."""
        due = final or (self.save_every > 0 and step % self.save_every == 0)
        return self.save(step, state) if due else False

    def wait_until_finished(self) -> None:
        """Blocks until every pending asynchronous save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- restoring -----------------------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        """Steps with a checkpoint, ascending."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest checkpointed step, or None."""
        return self.manager.latest_step()

    def step_directory(self, step: int) -> str:
        """The folder of checkpoint ``step``."""
        return os.path.join(self.directory, str(int(step)))

    def _newest_intact(self, read: Any) -> tuple[Any, int] | None:
        """``(read(step), step)`` for the newest step ``read`` succeeds on; None without steps.

        Every step that fails is named in one warning and remembered in ``broken_steps``.

        Raises:
          DataError: there are checkpoints but none can be read (names the checkpoint folder).
        """
        steps = [step for step in reversed(self.steps) if step not in self.broken_steps]
        if not steps and not self.broken_steps:
            return None
        for step in steps:
            try:
                return read(step), int(step)
            except SourceMismatchError:
                raise
            except Exception as error:  # orbax / tensorstore / JSON errors of a damaged step
                self.broken_steps.add(int(step))
                _LOG.warning(
                    "checkpoint %s is broken, skipping it: %s",
                    self.step_directory(step),
                    _first_line(error),
                )
        raise DataError(
            "no intact checkpoint to resume from (broken steps: "
            f"{', '.join(map(str, sorted(self.broken_steps)))}); move them away to start afresh",
            path=self.directory,
        )

    def restore(self, step: int, template: Any) -> Any:
        """Restores checkpoint ``step`` onto the structure, dtypes and shardings of ``template``.

        Args:
          step: a checkpointed step.
          template: a state of the same structure (arrays or ``ShapeDtypeStruct`` with sharding),
            e.g. a freshly created state placed on the current mesh.

        Returns:
          The restored state, every leaf with ``template``'s sharding.
        """
        record = self.external_reference(step)
        parts = None
        if record is not None:
            template, parts = self._check_external(step, record, template)
        target = abstract_like(template)
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.PyTreeRestore(
                        item=target,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    ),
                    CONFIG_ITEM: ocp.args.JsonRestore(),
                }
            ),
        )
        saved_config = restored[CONFIG_ITEM]
        changed = _differences(saved_config, self.config) if self.config else []
        if changed:
            _LOG.warning(
                "checkpoint %d of %s was written with a different config (%s)",
                step,
                self.directory,
                ", ".join(changed),
            )
        if parts is not None:
            return merge_external(restored[STATE_ITEM], self.external.path, parts)
        return restored[STATE_ITEM]

    def external_reference(self, step: int | None = None) -> dict[str, Any] | None:
        """The ``external`` record of checkpoint ``step`` (default: the newest): ``{"path",
        "source", "digest"}`` of the subtree it leaves out; None for a whole state."""
        step = self.latest_step() if step is None else step
        if step is None or not os.path.isdir(
            os.path.join(self.step_directory(step), EXTERNAL_ITEM)
        ):
            return None
        restored = self.manager.restore(
            int(step), args=ocp.args.Composite(**{EXTERNAL_ITEM: ocp.args.JsonRestore()})
        )
        return restored[EXTERNAL_ITEM]

    def _check_external(self, step: int, record: Mapping[str, Any], template: Any):
        """``(template without the external subtree, the subtree)`` once the template's subtree
        is the one checkpoint ``step`` was trained with; else a one-line SourceMismatchError."""
        recorded_source = record.get("source")
        if self.external is None or tuple(record.get("path", ())) != self.external.path:
            raise SourceMismatchError(
                f"checkpoint {step} leaves out the variables under "
                f"{'/'.join(record.get('path', ()))} (source {json.dumps(recorded_source)}); "
                "resume it with that source and the same frozen settings",
                path=self.directory,
            )
        template, parts = split_external(template, self.external.path)
        if self._external_digest is None:
            self._external_digest = tree_digest(parts)
        if record.get("digest") != self._external_digest:
            raise SourceMismatchError(
                f"the variables under {'/'.join(self.external.path)} are not those checkpoint "
                f"{step} of {self.directory} was trained with (sha256 of the arrays "
                f"{self._external_digest[:12]}… here, {str(record.get('digest'))[:12]}… "
                f"recorded; recorded source {json.dumps(recorded_source)}); use the original "
                "source or another workdir",
                path=self.external.name,
            )
        return template, parts

    def restore_latest(self, template: Any) -> tuple[Any, int] | None:
        """Restores the newest intact checkpoint; None when there is none.

        A checkpoint that cannot be read is named in one warning and skipped (it is left in
        place; see :meth:`save`).

        Returns:
          ``(state, step)`` or None.

        Raises:
          DataError: checkpoints exist but none is intact (names the checkpoint folder).
        """
        if self.external is not None and self._external_digest is None:
            # What the run starts from: the first save checks the subtree did not train.
            self._external_digest = tree_digest(split_external(template, self.external.path)[1])
        return self._newest_intact(lambda step: self.restore(step, template))

    def restore_config(self, step: int | None = None) -> dict[str, Any]:
        """The configuration stored with checkpoint ``step`` (default: the newest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint")
        restored = self.manager.restore(
            int(step), args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()})
        )
        return restored[CONFIG_ITEM]

    def restore_variables(
        self, step: int | None = None, sharding: jax.sharding.Sharding | None = None
    ) -> dict[str, Any]:
        """Restores only the model variables (params and other collections) of a checkpoint.

        Needs no template: shapes come from the checkpoint's metadata, so this works without the
        model code, on any device count. A checkpoint that leaves out an external subtree
        (:meth:`external_reference`) returns the variables without it.

        Args:
          step: the checkpoint; None = the newest intact one (a broken one is named in a warning
            and skipped).
          sharding: where to put the arrays; None = the first local device.

        Returns:
          ``{"params": ..., **collections}``.
        """
        if step is None:
            found = self._newest_intact(lambda step: self.restore_variables(step, sharding))
            if found is None:
                raise FileNotFoundError(f"{self.directory}: no checkpoint")
            return found[0]
        if sharding is None:
            sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        metadata = self.manager.item_metadata(int(step))[STATE_ITEM].tree
        wanted = {"params": metadata["params"], "collections": metadata["collections"]}
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), wanted
        )
        restored = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.PyTreeRestore(
                        item=target,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                        partial_restore=True,
                    )
                }
            ),
        )[STATE_ITEM]
        return {"params": restored["params"], **restored["collections"]}
