"""Python API: :func:`segment` for one query, :class:`Segmenter` for many.

A :class:`Segmenter` holds the model (loaded on first use) and what is reused across
queries (the support as read, its banks), and runs the :mod:`~medseg.pipeline` for each
query::

    seg = medseg.Segmenter(model="tiny", device="cuda")
    for res in seg.segment_many("s.nii.gz", "s_label.nii.gz", queries, labels=[5]):
        res.save("out/")
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from . import pipeline
from ._threads import Pending
from .config import ModelConfig, SegmentConfig, leaves, with_options
from .pipeline import Caches, RunContext
from .report import machine, versions
from .result import Result

if TYPE_CHECKING:
    from .engine import Sam2Engine

__all__ = ["ModelConfig", "Result", "SegmentConfig", "Segmenter", "machine", "segment",
           "versions"]

PathOrVolume = "str | os.PathLike | Volume"


class Segmenter:
    """Keeps SAM2 loaded across queries: build once, call :meth:`segment` many times.

    Args:
        config: the model settings (:class:`~medseg.config.ModelConfig`); its fields may
            also be given as keywords (``model="small"``, ``device="cuda"``, ...).
        progress: show progress bars (downloads, segmentation) on a terminal.
        options: :class:`~medseg.config.ModelConfig` fields overriding ``config``.

    Raises:
        UsageError: an invalid setting (checked here, before anything is loaded).
    """

    def __init__(self, config: ModelConfig | None = None, *, progress: bool = False,
                 **options: Any) -> None:
        self.config: ModelConfig = with_options(config or ModelConfig(), **options)
        self.progress = progress
        self.caches = Caches()  # the support as read and its banks, across queries
        self._engine: Sam2Engine | None = None
        self._building: Pending[Sam2Engine] | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Sam2Engine:
        """The loaded :class:`~medseg.engine.Sam2Engine` (loaded on first use, or waited for
        when :meth:`segment` started loading it while the scans were read)."""
        with self._lock:
            if self._engine is None:
                building, self._building = self._building, None
                self._engine = building.result() if building is not None else self._build()
            return self._engine

    def _build(self) -> Sam2Engine:
        from .engine import Sam2Engine

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
            return Sam2Engine(self.config, progress=self.progress)

    def _start_loading(self) -> None:
        """Build the model in the background (its errors surface when it is needed)."""
        with self._lock:
            if self._engine is None and self._building is None:
                self._building = Pending(self._build, name="medseg-model")

    def segment(self, support: PathOrVolume, support_label: PathOrVolume,
                query: PathOrVolume | None = None, config: SegmentConfig | None = None,
                **options: Any) -> Result:
        """Segment ``query`` from one labelled ``support`` scan.

        Args:
            support: the support scan (a file, a DICOM folder, or a :class:`Volume`).
            support_label: its label: a label map, a Slicer ``.seg.nrrd``, a DICOM-SEG or an
                RTSTRUCT (one painted slice is enough; a corrected result of medseg keeps
                the slices the user changed and re-estimates the rest), or a label
                :class:`Volume`.
            query: the scan to segment; None (or the support scan itself): segment the
                support scan from its painted slices.
            config: what to segment and how (:class:`~medseg.config.SegmentConfig`).
            options: its fields as flat keywords, e.g. ``labels=["liver"]``, ``shots=1``,
                ``window="lung"``, ``bank_size=8``, ``seed=1``.

        Returns:
            The :class:`~medseg.result.Result`: labelmap on the query's exact grid, the
            plan of structures and the report; ``.save(folder)`` writes the files.

        Raises:
            MedsegError: a user-side problem (bad input, option or checkpoint), with a
                one-line message; subclasses carry the command line's exit codes.
        """
        cfg = with_options(config or SegmentConfig(), **options)
        if cfg.needs_model:
            self._start_loading()  # while the scans are read and located
        ctx = RunContext(lambda: self.engine, self.progress, self.config.feature_cache_mb,
                         self.caches)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
            return pipeline.run(support, support_label, query, cfg, ctx)

    def segment_many(self, support: PathOrVolume, support_label: PathOrVolume,
                     queries: Iterable[PathOrVolume], config: SegmentConfig | None = None,
                     **options: Any) -> Iterator[Result]:
        """:meth:`segment` for each query in turn (one model load); a generator.

        Args:
            support, support_label, config, options: as for :meth:`segment`.
            queries: the scans to segment.

        Returns:
            An iterator of results, in the order of ``queries``.
        """
        for q in queries:
            yield self.segment(support, support_label, q, config, **dict(options))


def segment(support: PathOrVolume, support_label: PathOrVolume,
            query: PathOrVolume | None = None, *, model: ModelConfig | None = None,
            progress: bool = False, **options: Any) -> Result:
    """One-shot segmentation of ``query`` from a labelled ``support`` scan.

    Args:
        support: the support scan (a file, a DICOM folder, or a :class:`Volume`).
        support_label: its label (label map, ``.seg.nrrd``, DICOM-SEG, RTSTRUCT, or a
            label :class:`Volume`); one painted slice is enough.
        query: the scan to segment; None: the support scan itself.
        model: the model settings (:class:`~medseg.config.ModelConfig`).
        progress: show progress bars on a terminal.
        options: :class:`~medseg.config.SegmentConfig` fields as flat keywords
            (``labels=["liver"]``, ``method="transfer"``, ``shots=1``, ...), and
            :class:`~medseg.config.ModelConfig` fields (``device="cuda"``,
            ``checkpoint="sam2.1_hiera_tiny.pt"``, ...).

    Returns:
        The :class:`~medseg.result.Result` (labelmap, plan, report; ``.save(folder)``).

    Raises:
        MedsegError: a user-side problem, with a one-line message.
    """
    model_fields = {k: options.pop(k) for k in list(options) if k in _MODEL_NAMES}
    seg = Segmenter(model, progress=progress, **model_fields)
    return seg.segment(support, support_label, query, **options)


_MODEL_NAMES = frozenset(leaf.name for leaf in leaves(ModelConfig))
