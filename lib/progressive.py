"""Progressive learning (paper Algorithm 1): image size and regularization grow together by stage.

Small images are cheap and need little regularization; large images late in training need more.
Algorithm 1 splits training into M stages of equal length and interpolates *every* regularizer
linearly between its first and last value. The official code forgets to schedule dropout; here all
five are scheduled: RandAugment magnitude, mixup alpha, dropout, stochastic depth, weight decay.
Explicit phase tables (the coursework's) are the other way to write a schedule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

REGULARIZERS = ("randaug_magnitude", "mixup_alpha", "dropout", "drop_path", "weight_decay")


@dataclass(frozen=True)
class TrainingStage:
    """One stage: epochs ``[start_epoch, end_epoch)`` (0-based) and the values used throughout."""

    index: int
    start_epoch: int
    end_epoch: int
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    dropout: float
    drop_path: float
    weight_decay: float

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.start_epoch

    def describe(self) -> str:
        return (
            f"stage {self.index}: epochs {self.start_epoch + 1}-{self.end_epoch}, "
            f"image {self.image_size}px, RandAugment {self.randaug_magnitude:g}, "
            f"mixup {self.mixup_alpha:g}, dropout {self.dropout:g}, "
            f"stochastic depth {self.drop_path:g}, weight decay {self.weight_decay:g}"
        )


class Schedule(list):
    """The stages of a run, in order; ``stage_at(epoch)`` is what the trainer asks every epoch."""

    @property
    def epochs(self) -> int:
        return self[-1].end_epoch

    def stage_at(self, epoch: int) -> TrainingStage:
        for stage in self:
            if stage.start_epoch <= epoch < stage.end_epoch:
                return stage
        raise ValueError(f"epoch {epoch} is outside the schedule's {self.epochs} epochs")

    def rows(self) -> list[dict]:
        return [asdict(s) for s in self]

    def describe(self) -> str:
        return "\n".join(s.describe() for s in self)


def algorithm1(
    epochs: int,
    num_stages: int,
    size: tuple[int, int],
    *,
    randaug_magnitude: tuple[float, float] = (0, 0),
    mixup_alpha: tuple[float, float] = (0, 0),
    dropout: tuple[float, float] = (0, 0),
    drop_path: tuple[float, float] = (0, 0),
    weight_decay: tuple[float, float] = (0, 0),
    final_share: float | None = None,
    size_multiple: int = 1,
) -> Schedule:
    """Paper Algorithm 1: ``num_stages`` stages of (near) equal length, every value interpolated.

    Each regularizer is a ``(first, last)`` pair; stage i gets first + (last - first) * i / (M - 1).
    With ``epochs`` not divisible by M, the first ``epochs % M`` stages get one epoch more.
    Two shapes of the anchors besides: ``final_share`` gives the last stage that share of the
    epochs (FFCV and Composer keep the final size for the last 15-25%) and the other stages split
    the rest; ``size_multiple`` rounds the sizes between the first and the last to a multiple.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if not 1 <= num_stages <= epochs:
        raise ValueError(f"num_stages must be between 1 and epochs ({epochs}), got {num_stages}")
    ranges = dict(
        randaug_magnitude=randaug_magnitude,
        mixup_alpha=mixup_alpha,
        dropout=dropout,
        drop_path=drop_path,
        weight_decay=weight_decay,
    )
    lengths = _stage_lengths(epochs, num_stages, final_share)
    stages, start = [], 0
    for i, length in enumerate(lengths):
        t = i / (num_stages - 1) if num_stages > 1 else 1.0
        values = {k: lo + (hi - lo) * t for k, (lo, hi) in ranges.items()}
        image_size = size[0] + (size[1] - size[0]) * t
        if 0 < i < num_stages - 1:
            image_size = size_multiple * round(image_size / size_multiple)
        stages.append(TrainingStage(i, start, start + length, round(image_size), **values))
        start += length
    return _validated(Schedule(stages))


def _stage_lengths(epochs: int, num_stages: int, final_share: float | None) -> list[int]:
    """Epochs per stage: equal (the first ``epochs % M`` one more), or the last ``final_share`` of
    them in the last stage and the rest split so."""
    if final_share is None or num_stages == 1:
        return [epochs // num_stages + (1 if i < epochs % num_stages else 0) for i in range(num_stages)]
    if not 0 < final_share < 1:
        raise ValueError(f"final_share must be in (0, 1), got {final_share}")
    last = min(max(1, round(epochs * final_share)), epochs - (num_stages - 1))
    return [*_stage_lengths(epochs - last, num_stages - 1, None), last]


def phase_table(rows: list[dict], epochs: int | None = None) -> Schedule:
    """Explicit phases, written like the coursework's tables: ``{"epochs": (first, last), ...}``.

    Epochs are 1-based and inclusive, as on the slides; phases must be contiguous from epoch 1 and,
    when ``epochs`` is given, cover exactly that many. Missing regularizers default to 0.
    """
    stages, expected_first = [], 1
    for i, row in enumerate(rows):
        row = dict(row)
        span = row.pop("epochs", None)
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(e, int) for e in span)):
            raise ValueError(f"phase {i}: epochs must be [first, last] epoch numbers, got {span!r}")
        first, last = span
        if first != expected_first or last < first:
            raise ValueError(
                f"phase {i} covers epochs {first}-{last}; it must start at epoch "
                f"{expected_first} and end at or after it (phases must be contiguous)"
            )
        unknown = set(row) - set(REGULARIZERS) - {"image_size"}
        if unknown:
            raise ValueError(
                f"phase {i}: unknown setting(s) {sorted(unknown)}; known: image_size, {', '.join(REGULARIZERS)}"
            )
        if "image_size" not in row:
            raise ValueError(f"phase {i}: image_size is missing")
        bad = [
            k
            for k in (*REGULARIZERS, "image_size")
            if k in row and (isinstance(row[k], bool) or not isinstance(row[k], (int, float)))
        ]
        if bad or not float(row["image_size"]).is_integer():
            raise ValueError(
                f"phase {i}: {', '.join(bad) or 'image_size'} must be a number "
                f"(image_size whole pixels), got {row.get((bad or ['image_size'])[0])!r}"
            )
        values = {k: float(row.get(k, 0)) for k in REGULARIZERS}
        stages.append(TrainingStage(i, first - 1, last, int(row["image_size"]), **values))
        expected_first = last + 1
    if not stages:
        raise ValueError("a phase table needs at least one phase")
    schedule = Schedule(stages)
    if epochs is not None and schedule.epochs != epochs:
        raise ValueError(f"the phase table covers {schedule.epochs} epochs but the run has {epochs}")
    return _validated(schedule)


def _validated(schedule: Schedule) -> Schedule:
    for earlier, later in zip(schedule, schedule[1:]):
        if later.image_size < earlier.image_size:
            raise ValueError(
                f"image size shrinks from {earlier.image_size}px (stage {earlier.index}) to "
                f"{later.image_size}px (stage {later.index}): progressive learning grows images; "
                f"give sizes from small to large"
            )
    for s in schedule:
        if s.image_size <= 0:
            raise ValueError(f"stage {s.index}: image size must be positive, got {s.image_size}")
        for k in ("dropout", "drop_path"):
            if not 0 <= getattr(s, k) < 1:
                raise ValueError(f"stage {s.index}: {k} must be in [0, 1), got {getattr(s, k)}")
        if min(s.randaug_magnitude, s.mixup_alpha, s.weight_decay) < 0:
            raise ValueError(f"stage {s.index}: regularizers must be non-negative")
    return schedule


# The coursework deck's phase tables (its slides on progressive training), as presets.
COURSEWORK_TABLES = {
    "fashion_mnist": [
        dict(epochs=(1, 20), image_size=28, randaug_magnitude=5, dropout=0.2, drop_path=0.0, weight_decay=0),
        dict(epochs=(21, 50), image_size=50, randaug_magnitude=10, dropout=0.3, drop_path=0.1, weight_decay=3e-4),
        dict(epochs=(51, 100), image_size=80, randaug_magnitude=20, dropout=0.4, drop_path=0.2, weight_decay=3e-3),
    ],
    "cifar10": [
        dict(epochs=(1, 20), image_size=128, randaug_magnitude=10, dropout=0.2, drop_path=0.0, weight_decay=1e-4),
        dict(epochs=(21, 40), image_size=150, randaug_magnitude=15, dropout=0.3, drop_path=0.1, weight_decay=3e-4),
        dict(epochs=(41, 60), image_size=200, randaug_magnitude=20, dropout=0.4, drop_path=0.2, weight_decay=3e-3),
    ],
}


def schedule_from_spec(spec: dict, epochs: int) -> Schedule:
    """Build a schedule from a profile's plain-literal spec (what YAML and papermill can carry).

    ``{"phases": [...]}`` or ``{"coursework": "fashion_mnist"}`` for a phase table, otherwise the
    keyword arguments of :func:`algorithm1` (``num_stages``, ``size`` and ``(first, last)`` pairs,
    or one value for both). Shape, types and order are checked here, with one-line errors.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"schedule must be a mapping (size, num_stages, ...), got {spec!r}")
    kinds = [k for k in ("coursework", "phases", "size") if k in spec]
    if len(kinds) > 1:
        raise ValueError(
            f"schedule mixes {' and '.join(kinds)}: give Algorithm-1 ranges (size, ...), "
            f"a phase table (phases) or a coursework table, not several"
        )
    spec = dict(spec)
    if "coursework" in spec:
        name = spec.pop("coursework")
        if spec:
            raise ValueError(f"a coursework schedule takes no other settings, got {sorted(spec)}")
        if name not in COURSEWORK_TABLES:
            raise ValueError(f"unknown coursework table {name!r}: known ones are {', '.join(COURSEWORK_TABLES)}")
        return phase_table(COURSEWORK_TABLES[name], epochs)
    if "phases" in spec:
        if not isinstance(spec["phases"], list) or not all(isinstance(r, dict) for r in spec["phases"]):
            raise ValueError("phases must be a list of mappings like {epochs: [1, 20], image_size: 28, ...}")
        return phase_table(spec["phases"], epochs)
    if "size" not in spec:
        raise ValueError("a schedule needs 'size': [first, last] image sizes (or 'phases' / 'coursework')")
    allowed = {"num_stages", "size", "final_share", "size_multiple"} | set(REGULARIZERS)
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"unknown schedule setting(s) {sorted(unknown)}; known: {', '.join(sorted(allowed))}")
    num_stages = spec.pop("num_stages", 1)
    if isinstance(num_stages, bool) or not isinstance(num_stages, int):
        raise ValueError(f"num_stages must be an integer, got {num_stages!r}")
    shape = {k: spec.pop(k) for k in ("final_share", "size_multiple") if k in spec}
    if "final_share" in shape and (
        isinstance(shape["final_share"], bool) or not isinstance(shape["final_share"], (int, float))
    ):
        raise ValueError(f"final_share must be a number in (0, 1), got {shape['final_share']!r}")
    multiple = shape.get("size_multiple", 1)
    if (
        isinstance(multiple, bool)
        or not isinstance(multiple, (int, float))
        or multiple < 1
        or not float(multiple).is_integer()
    ):
        raise ValueError(f"size_multiple must be a whole number of pixels >= 1, got {multiple!r}")
    shape["size_multiple"] = int(multiple)
    pairs = {k: _pair(k, v) for k, v in spec.items()}
    if not all(float(v).is_integer() for v in pairs["size"]):
        raise ValueError(f"size must be whole pixels, got {spec['size']!r}")
    if pairs["size"][1] < pairs["size"][0]:
        raise ValueError(f"size {list(pairs['size'])} shrinks: progressive learning grows images; give [small, large]")
    return algorithm1(epochs, num_stages, **pairs, **shape)


def _pair(name: str, value) -> tuple[float, float]:
    """(first, last) from a number or a two-element list of numbers."""
    values = value if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"schedule {name} must be a number or [first, last] numbers, got {value!r}")
    return tuple(values)
