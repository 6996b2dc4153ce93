"""What a check sees while it runs: the model, the data, its parameters, a seeded RNG, shared caches."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from auditor.cancel import raise_if_cancelled
from auditor.data import Dataset
from auditor.errors import CheckCancelled, SkipCheck
from auditor.hookspecs import GRADIENTS, GradientBackend, capabilities_of
from auditor.model import ModelHandle
from auditor.outputs import Predictions, Task, encode_labels, predictions_of


@dataclass
class SharedCache:
    """Forward passes shared between checks of one audit (performance and bias both need predictions)."""

    predictions: dict[tuple[int, int], Predictions] = field(default_factory=dict)
    activations: dict[tuple[int, int, str], np.ndarray] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass
class AuditContext:
    """Handed to :meth:`auditor.Check.run`.

    ``model`` is the model under audit (the ``baseline:`` model when the runner re-runs a check on it, with
    ``role == "baseline"``); ``data`` the audit data (``None`` if the spec has none); ``params`` the check's
    effective parameters (defaults filled in); ``rng`` a generator seeded from the spec's seed and the check's
    id, so that every run of the same spec is identical; ``references`` the ``reference:`` models by name;
    ``train_data`` the ``train_data:`` set.
    """

    check_id: str
    params: dict[str, Any]
    model: ModelHandle
    data: Dataset | None
    seed: int
    rng: np.random.Generator
    role: str = "model"
    references: dict[str, ModelHandle] = field(default_factory=dict)
    train_data: Dataset | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    backends: dict[str, Callable[..., Any]] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[int, int | None, str], None] | None = None
    cache: SharedCache = field(default_factory=SharedCache)
    #: Where this check may write files a person should keep (e.g. retrained models): a folder beside the
    #: reports, ``<report dir>/artifacts/<check id>``; created on first use by :meth:`artifact_path`.
    artifact_dir: Path | None = None
    #: Rows per shard of sharded checks when the spec sets ``execution.shard_rows`` (``None``: each check's own).
    shard_rows: int | None = None

    def artifact_path(self, name: str) -> Path:
        """A path for a file this check writes, inside :attr:`artifact_dir` (a temporary folder without one)."""
        if self.artifact_dir is None:
            import tempfile

            self.artifact_dir = Path(tempfile.mkdtemp(prefix=f"auditor-{self.check_id}-"))
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        return self.artifact_dir / name

    # -------------------------------------------------------------------------------------- helpers
    def require_data(self) -> Dataset:
        """The data set, or skip if the spec has none."""
        if self.data is None:
            raise SkipCheck("the spec has no data: section")
        return self.data

    def check_cancelled(self) -> None:
        """Raise if the runner cancelled this check (timeout or Ctrl-C). Long loops should call this."""
        if self.cancel_event.is_set():
            raise CheckCancelled("cancelled")
        raise_if_cancelled()

    def report_progress(self, done: int, total: int | None = None, what: str = "") -> None:
        """Tell the terminal display how far the check is (optional)."""
        if self.progress is not None:
            self.progress(done, total, what)

    def predictions(self, data: Dataset | None = None, model: ModelHandle | None = None) -> Predictions:
        """The model's interpreted predictions on the data (one forward pass per model and data, shared)."""
        data = data or self.require_data()
        model = model or self.model
        key = (id(model), id(data))
        with self.cache.lock:
            if key not in self.cache.predictions:
                done = [0]

                def step(k: int) -> None:
                    done[0] += k
                    self.report_progress(done[0], data.n, "inference")

                raw = model.run(data.x, inputs=data.inputs, progress=step)
                self.cache.predictions[key] = predictions_of(model, raw, y=data.y)
            return self.cache.predictions[key]

    def predict_proba(self, x: np.ndarray, model: ModelHandle | None = None, *, data: Dataset | None = None,
                      rows: np.ndarray | slice | None = None, repeat: int = 1) -> np.ndarray:
        """Class probabilities for arbitrary inputs of the primary input (perturbed data, attacks), read the
        same way as :meth:`predictions` reads the audit data's outputs.

        A model with other per-sample inputs (``Dataset.inputs``: an attention mask, a recurrent state) gets
        them from the rows ``x`` was derived from: ``data`` (a subset the check took; default the audit data)
        and, within it, ``rows`` (default all; ``repeat`` tiles them for ``repeat`` stacked copies).
        """
        model = model or self.model
        return self.proba_of(model.run(x, inputs=self.companions(model, data, rows, repeat)), model)

    def proba_of(self, raw: Mapping[str, np.ndarray], model: ModelHandle | None = None) -> np.ndarray:
        """Class probabilities of raw outputs (``model.run``'s) of arbitrary inputs, read as
        :meth:`predict_proba` reads them: for a sharded check whose shards return raw outputs, merged on the
        driver (where ``self.data`` is the whole audit data, as in an unsharded run)."""
        model = model or self.model
        # The task is read as for the audit data (cached predictions when there are some), without running
        # the whole data set first: a sampled audit of a large data set must not pay for a full pass.
        cached = self.cache.predictions.get((id(model), id(self.data))) if self.data is not None else None
        task = cached.task if cached is not None else model.config.task
        if task is Task.AUTO and self.data is None:
            task = Task.CLASSIFICATION
        p = predictions_of(model, raw, task=task, y=None if self.data is None else self.data.y)
        if p.probs is None:
            raise SkipCheck("the model is not a classifier")
        return p.probs

    def companions(self, model: ModelHandle | None = None, data: Dataset | None = None,
                   rows: np.ndarray | slice | None = None, repeat: int = 1) -> dict[str, np.ndarray]:
        """The other per-sample inputs ``model`` needs for inputs derived from ``data[rows]`` (empty when the
        model has a single data input): pass them as ``model.run(x, inputs=...)``."""
        model = model or self.model
        if not model.sample_inputs:
            return {}
        source = data if data is not None else self.data
        if source is None:
            return {}
        return source.companions(rows, repeat=repeat)

    def labels(self, data: Dataset | None = None) -> np.ndarray:
        """True labels as column indices of the model's classes (-1 for unknown labels)."""
        data = data or self.require_data()
        if data.y is None:
            raise SkipCheck("the data has no labels (data.y)")
        return self.labels_for(data.y, self.predictions(data))

    @staticmethod
    def labels_for(y: np.ndarray, pred: Predictions) -> np.ndarray:
        """True labels ``y`` as column indices of the classes of ``pred`` (-1 for unknown labels), as
        :meth:`labels` reads them: for a sharded check's merge, which holds gathered predictions, not data."""
        if pred.classes is None:
            return np.asarray(y)
        y = np.asarray(y)
        if y.dtype.kind in "OUS" and not any(isinstance(c, str) for c in pred.classes):
            example = next((v for v in y if v is not None), "?")
            raise SkipCheck(f"the labels are strings (e.g. {str(example)!r}) but the model's classes are column "
                            f"indices 0..{len(pred.classes) - 1}: list the class names in column order with "
                            f"data.classes")
        return encode_labels(y, pred.classes)

    def activations(self, layers: Sequence[str] | str, data: Dataset | None = None,
                    model: ModelHandle | None = None) -> dict[str, np.ndarray]:
        """Intermediate tensors for the data, all requested layers gathered in one batched pass.

        ``layers`` is ``"every"``, ``"penultimate"`` or tensor names.
        """
        data = data or self.require_data()
        model = model or self.model
        names = model.layer_names(layers)
        todo = [n for n in names if (id(model), id(data), n) not in self.cache.activations]
        if todo:
            # The same pass also yields the audited outputs: predictions come free when not cached yet.
            with_preds = (id(model), id(data)) not in self.cache.predictions
            wanted = list(dict.fromkeys(todo + (list(model.outputs) if with_preds else [])))
            out = model.run(data.x, wanted, inputs=data.inputs)
            with self.cache.lock:
                for n in todo:
                    self.cache.activations[(id(model), id(data), n)] = out[n]
                if with_preds:
                    self.cache.predictions[(id(model), id(data))] = predictions_of(model, out, y=data.y)
        return {n: self.cache.activations[(id(model), id(data), n)] for n in names}

    def data_for(self, model: ModelHandle, data: Dataset | None = None) -> Dataset:
        """The audit data shaped for ``model`` (a reference or baseline may take the other image layout)."""
        data = data or self.require_data()
        return data.fitted_to(model.input.shape, model.input.name, str(model.path))

    def backend(self, name: str) -> Any:
        """A backend offered by a plugin (e.g. ``"torch"`` for gradients), built for this context's model;
        skips the check with a reason when no plugin offers it."""
        factory = self.backends.get(name)
        if factory is None:
            raise SkipCheck(f"needs the '{name}' backend, which no installed plugin provides")
        return factory(self.model)

    def gradients(self, model: ModelHandle | None = None) -> GradientBackend:
        """A backend computing input gradients for ``model`` (default: this context's model; a reference or
        the baseline work the same), from whichever plugin offers the capability; skips the check with a
        reason when none does."""
        for _name, factory in sorted(self.backends.items()):
            if GRADIENTS in capabilities_of(factory):
                return cast(GradientBackend, factory(model or self.model))
        raise SkipCheck("needs gradients: install a differentiable backend (pip install 'onnx-auditor[torch]')")

    def sample(self, limit: int | None, data: Dataset | None = None) -> Dataset:
        """At most ``limit`` rows of the data, stratified by label and seeded (the sample is noted)."""
        data = data or self.require_data()
        if limit is None or limit >= data.n:
            return data
        return data.sample(limit, self.rng)
