"""``lana run``: the whole pipeline in one resumable command, with a report.

Stages, each writing its artifact into the run directory::

    profile   lut.json            (or a shipped LUT measured on this machine's hardware, copied),
                                  calibrated end to end on architectures of the run's pool
    pretrain  pretrain/           per-(layer, op) distilled weights, resumable
    score     scores.json         loss change of every op alone in its layer
    search    search.json (+png)  K diverse architectures under the budget (HiGHS)
    verify    verify.json         the candidates measured end to end; those over the budget are
                                  dropped, and the search runs again while too few remain
    select    select.json         the verified candidate with the lowest loss, BN in
                                  batch-statistics mode
    finetune  finetune/           student.pt and metrics.json (KD from the teacher)
    validate  validation.json     teacher and student measured end to end in the same session
    report    summary.json, report.md and PNGs

``run.json`` records the settings and which stages finished.  Re-running skips finished stages and
resumes an interrupted one.  Changing a setting re-runs only the stages that depend on it (a new
budget, device or LUT re-runs the search onwards and keeps the pretrained ops and their scores); a
directory holding another teacher's, layer selector's, pool's or data's run is refused unless
``force``.  The teacher is a registry name or a user module (``path/to/file.py:factory`` with its
trained weights, a layer selector and, without ``model.input_shape``, an input shape).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lana.errors import LanaError

STAGES = ("profile", "pretrain", "score", "search", "verify", "select", "finetune", "validate",
          "report")
# The settings each stage depends on directly ...
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "profile": ("teacher", "selector", "input_shape", "device", "pool", "lut", "calibrate",
                "repeats"),
    "pretrain": ("teacher", "selector", "input_shape", "teacher_weights", "pool", "data", "seed",
                 "pretrain_epochs", "images"),
    "score": ("score_samples",),
    "search": ("budget", "k", "overlap"),
    "verify": ("verify_rounds", "repeats"),
    "select": (),
    "finetune": ("finetune_epochs",),
    "validate": ("tolerance", "repeats"),
    "report": (),
}
# ... and the stages whose artifacts it reads.  Distillation and scoring do not depend on the
# device: a new LUT or device re-runs the search onwards and keeps the pretrained ops.
STAGE_DEPS: dict[str, tuple[str, ...]] = {
    "profile": (),
    "pretrain": (),
    "score": ("pretrain",),
    "search": ("profile", "score"),
    "verify": ("profile", "search"),
    "select": ("verify",),
    "finetune": ("select",),
    "validate": ("profile", "finetune"),
    "report": ("validate",),
}
# What each stage writes into the run directory (removed when its settings change).
STAGE_ARTIFACTS: dict[str, tuple[str, ...]] = {
    "profile": ("lut.json",),
    "pretrain": ("pretrain",),
    "score": ("scores.json",),
    "search": ("search.json", "search.png"),
    "verify": ("verify.json",),
    "select": ("select.json",),
    "finetune": ("finetune",),
    "validate": ("validation.json",),
    "report": ("summary.json", "report.md", "teacher_vs_student.png", "pareto.png", "layers.png",
               "predicted_vs_measured.png"),
}
# Settings added after run directories were first written, and their defaults: left out of a
# stage's digest at that default, so that a directory written before them resumes where it was.
LATER_DEFAULTS: dict[str, Any] = {"repeats": 3, "teacher_weights": None, "selector": None,
                                  "input_shape": None}
# Settings that make a directory "another run": changing them needs --force.
IDENTITY = ("teacher", "selector", "pool", "data")
SCHEMA = "lana.run/1"
REPO_LUTS = Path(__file__).resolve().parent.parent / "luts"


class RunError(LanaError):
    """A problem with a ``lana run`` request or its output directory."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's artifacts."""

    teacher: str = "demo"  # registry name (`lana teachers`) or /abs/path/file.py:factory
    teacher_weights: str | None = None  # state_dict file of the trained teacher (default: shipped)
    selector: str | None = None  # a user module's layer glob (default: model.lana_selector)
    input_shape: str | None = None  # "C,H,W" of a user module (default: model.input_shape)
    device: str = "cpu-ort"  # device preset that measures latency
    budget: str = "0.5x"  # latency budget: ms or a fraction of the teacher ("0.5x")
    pool: str = "small"  # candidate pool: small, full or single-shot
    data: str | None = None  # ImageFolder root; None is the embedded digits data
    lut: str | None = None  # an explicit LUT file instead of profiling
    calibrate: int = 24  # architectures measured end to end to calibrate the LUT (0: do not)
    k: int = 10  # diverse architectures the search returns
    overlap: float = 0.7  # max share of layers two architectures may have in common
    seed: int = 0
    pretrain_epochs: int | None = None  # None: the stage's default
    finetune_epochs: int | None = None
    images: int | None = None  # cap on training images (quick runs)
    score_samples: int | None = None
    tolerance: float = 0.05  # measured latency may exceed the budget by this share
    verify_rounds: int = 3  # re-searches while too few candidates meet the budget (0: none)
    repeats: int = 3  # end-to-end measurements of each network: calibration, verify, validation

    def digest(self, names: tuple[str, ...]) -> str:
        values = {n: getattr(self, n) for n in names
                  if not (n in LATER_DEFAULTS and getattr(self, n) == LATER_DEFAULTS[n])}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Manifest:
    config: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "Manifest | None":
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}")
            return cls(data["config"], data.get("stages", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{path} is not a readable lana run manifest ({exc}); use another --out "
                           f"or pass --force to start over") from exc

    def write(self, path: Path) -> None:
        from lana.atomic import write_text

        write_text(path, json.dumps({"schema": SCHEMA, "config": self.config,
                                     "stages": self.stages}, indent=1))


def upstream(stage: str) -> list[str]:
    """``stage`` and every stage it depends on, directly or not, in pipeline order."""
    seen = {stage}
    todo = [stage]
    while todo:
        for dep in STAGE_DEPS[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return [s for s in STAGES if s in seen]


def downstream(stage: str) -> list[str]:
    """The stages that depend on ``stage``, directly or not (``stage`` excluded)."""
    return [s for s in STAGES if s != stage and stage in upstream(s)]


def stage_digest(config: RunConfig, stage: str) -> str:
    """A stage's fingerprint covers its own inputs and those of every stage it depends on."""
    names: list[str] = []
    for s in upstream(stage):
        names += STAGE_INPUTS[s]
    return config.digest(tuple(dict.fromkeys(names)))


def _check_device(device: str) -> None:
    from profilers import list_presets, load_preset

    try:
        preset = load_preset(device)
    except LanaError:
        raise
    except Exception as exc:  # profilers errors are plain ValueErrors by design
        raise RunError(str(exc)) from exc
    reason = preset.unusable_reason()
    if reason:
        usable = [p.name for p in list_presets() if not p.unusable_reason()]
        raise RunError(f"device {device!r} is not usable here: {reason}; usable devices: "
                       f"{', '.join(usable) or 'none'}")


def remove_artifacts(out: Path, stage: str) -> None:
    """Delete what ``stage`` wrote into the run directory ``out``."""
    for name in STAGE_ARTIFACTS[stage]:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _prepare_dir(out: Path, config: RunConfig, force: bool) -> Manifest:
    manifest_path = out / "run.json"
    old = None if force else Manifest.read(manifest_path)
    if force and out.exists():
        for stage in STAGES:
            remove_artifacts(out, stage)
        (out / "run.json").unlink(missing_ok=True)
        for png in out.glob("*.png"):
            png.unlink()
    elif old is None and out.exists() and any(out.iterdir()):
        raise RunError(f"{out} is not empty and holds no lana run; choose another --out or pass "
                       f"--force to use it anyway")
    if old is not None:
        changed = [n for n in IDENTITY if old.config.get(n) != getattr(config, n)]
        if changed:
            was = ", ".join(f"{n}={old.config.get(n)!r}" for n in changed)
            raise RunError(f"{out} holds another run ({was}); choose another --out or pass --force "
                           f"to replace it")
        old.config = asdict(config)
        return old
    out.mkdir(parents=True, exist_ok=True)
    return Manifest(asdict(config))


def shipped_lut(teacher: str, device: str, pool: str) -> Path | None:
    """A LUT under ``luts/`` for this teacher and device that covers the pool, is not stale, and
    was measured on the CPU/GPU model this machine has, with the threads the preset takes here
    (a model string like "AMD EPYC" names many machines); None when there is none."""
    from lana.lut import Lut
    from lana.teachers import is_user_module
    from profilers import ProfilerError, load_preset
    from profilers.system import cpu_model, gpu_info

    if is_user_module(teacher):
        return None
    try:
        threads = load_preset(device).resolved_threads()
    except ProfilerError:  # not a preset: the profile stage says so
        return None
    candidates = [REPO_LUTS / device / f"{teacher}.json", REPO_LUTS / device / f"{teacher}-{pool}.json"]
    here = {"cpu": cpu_model(), "gpu": gpu_info().get("gpu")}
    for path in candidates:
        if not path.exists():
            continue
        try:
            lut = Lut.load(path, teacher=teacher)
        except LanaError:
            continue
        seen = lut.device.get("seen", {})
        if seen.get("cpu") != here.get("cpu") or seen.get("gpu") != here.get("gpu"):
            continue
        if lut.preset != device or lut.device.get("threads") != threads:
            continue
        from lana.pool import build_pool
        from lana.teachers import create_teacher

        keys = [k for lp in build_pool(create_teacher(teacher, pretrained=False), pool) for k in lp.keys]
        if lut.missing(keys) or lut.fixed is None:
            continue
        return path
    return None


def _check_options(config: RunConfig) -> None:
    """Refuse option values a later stage would refuse, before the first stage runs."""
    from lana.search import Budget
    from lana.search.budget import check_unit
    from lana.search.errors import SearchError

    try:
        if isinstance(config.budget, str):
            check_unit(config.budget, latency=True)
        Budget("latency", config.budget)
    except SearchError as exc:
        raise RunError(f"--budget: {exc}") from None
    minimums = {"--k": (config.k, 1), "--calibrate": (config.calibrate, 0),
                "--pretrain-epochs": (config.pretrain_epochs, 1),
                "--finetune-epochs": (config.finetune_epochs, 1), "--images": (config.images, 1),
                "--verify-rounds": (config.verify_rounds, 0), "--seed": (config.seed, 0),
                "--repeats": (config.repeats, 1)}
    for option, (value, low) in minimums.items():
        if value is not None and value < low:
            raise RunError(f"{option} must be at least {low}, not {value}")
    if not 0 < config.overlap <= 1:
        raise RunError(f"--overlap must be in (0, 1], not {config.overlap}; 0.7 lets two "
                       f"architectures share at most 70% of their layers")
    if not 0 <= config.tolerance < 10:
        raise RunError(f"--tolerance is a fraction (0.05 lets the measured latency exceed the "
                       f"budget by 5 %), not {config.tolerance}")


class Pipeline:
    """Runs the stages of one run directory; see the module docstring."""

    def __init__(self, config: RunConfig, out: str | Path, *, force: bool = False,
                 console: Any = None, log: Callable[[str], None] | None = None) -> None:
        from rich.console import Console

        self.config = config
        self.out = Path(out)
        self.console = console or Console(stderr=True)
        _check_device(config.device)
        if config.pool not in ("small", "full", "single-shot"):
            from lana.ops import POOLS

            raise RunError(f"unknown pool {config.pool!r}; valid pools: {', '.join(POOLS)}")
        _check_options(config)
        self._teacher = None
        self._check_teacher()
        self.manifest = _prepare_dir(self.out, config, force)

    # -- helpers -----------------------------------------------------------------------------
    @property
    def teacher(self):
        if self._teacher is None:
            from lana.pretrain import open_teacher

            c = self.config
            self._teacher = open_teacher(c.teacher, c.teacher_weights, selector=c.selector,
                                         input_shape=c.input_shape)
        return self._teacher

    def _check_teacher(self) -> None:
        """A teacher the run can distil from, before hours of profiling: one that builds, whose
        layers its selector finds, with trained weights."""
        from lana.pretrain import PretrainError
        from lana.teachers import is_user_module

        name = self.config.teacher
        try:
            self.teacher
        except PretrainError:
            where = (", or load it in the factory" if is_user_module(name) else
                     " (`lana teachers` names the timm model whose weights load into it)")
            raise RunError(f"teacher {name} has no trained weights here, and distilling from "
                           f"random ones would be meaningless; pass --teacher-weights FILE, a "
                           f"state_dict of the trained network{where}") from None

    def path(self, name: str) -> Path:
        return self.out / name

    def _measures(self, lut: Any) -> bool:
        """Whether the run's device is the one ``lut`` was measured with (a preset may be named by
        its file), so this machine can calibrate and verify its predictions."""
        from profilers import load_preset

        return lut.preset in (self.config.device, load_preset(self.config.device).name)

    def done(self, stage: str) -> bool:
        entry = self.manifest.stages.get(stage, {})
        return bool(entry.get("done")) and entry.get("digest") == stage_digest(self.config, stage)

    def _mark(self, stage: str, seconds: float, **extra: Any) -> None:
        self.manifest.stages[stage] = {"done": True, "digest": stage_digest(self.config, stage),
                                       "seconds": round(seconds, 2), **extra}
        self.manifest.write(self.path("run.json"))

    def _invalidate(self, stage: str) -> None:
        """Before ``stage`` runs: forget every stage that read its artifacts and delete what they
        wrote; delete ``stage``'s own artifacts too when they were made with other settings (an
        interrupted stage with the same settings keeps them and resumes)."""
        for s in downstream(stage):
            if self.manifest.stages.pop(s, None) is not None:
                remove_artifacts(self.out, s)
        entry = self.manifest.stages.get(stage)
        if entry is not None and entry.get("digest") != stage_digest(self.config, stage):
            remove_artifacts(self.out, stage)
        self.manifest.stages[stage] = {"done": False, "digest": stage_digest(self.config, stage)}
        self.manifest.write(self.path("run.json"))

    # -- the stages ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.manifest.write(self.path("run.json"))
        total = time.perf_counter()
        for n, stage in enumerate(STAGES, 1):
            if self.done(stage):
                self.console.print(f"[dim][{n}/{len(STAGES)}] {stage}: done "
                                   f"({self.manifest.stages[stage]['seconds']:.0f} s), skipped[/]")
                continue
            self._invalidate(stage)
            self.console.rule(f"[bold][{n}/{len(STAGES)}] {stage}")
            start = time.perf_counter()
            extra = getattr(self, f"stage_{stage}")() or {}
            self._mark(stage, time.perf_counter() - start, **extra)
        summary = json.loads(self.path("summary.json").read_text())
        summary["wall_s"] = round(time.perf_counter() - total, 1)
        return summary

    def stage_profile(self) -> dict:
        import shutil as sh

        c = self.config
        target = self.path("lut.json")
        if c.lut:
            from lana.lut import Lut

            Lut.load(c.lut, teacher=c.teacher)
            sh.copyfile(c.lut, target)
            source = str(c.lut)
        elif (shipped := shipped_lut(c.teacher, c.device, c.pool)) is not None:
            sh.copyfile(shipped, target)
            self.console.print(f"using {shipped.relative_to(REPO_LUTS.parent)}: measured on this "
                               f"machine's hardware with the same op code")
            source = str(shipped)
        else:
            from lana.profile import profile

            profile(c.device, c.teacher, pool=c.pool, out=target, resume=target.exists(),
                    progress=True, selector=c.selector, input_shape=c.input_shape)
            source = "profiled"
        return {"source": source, **self._calibrate(target)}

    def _calibrate(self, target: Path) -> dict:
        """Fit the LUT to end-to-end measurements of architectures of the run's pool, unless it
        already carries a calibration for that pool (each LUT entry pays a call and layout
        conversions at the op's input and output, which the assembled network pays only once)."""
        from lana.lut import Lut

        c = self.config
        lut = Lut.load(target, teacher=c.teacher)
        existing = lut.calibration
        if c.calibrate <= 0:
            return {"calibration": "off"}
        if not self._measures(lut):
            self.console.print(f"[yellow]the LUT was measured with {lut.preset!r}, not "
                               f"{c.device!r}: not calibrated here (calibrate it on its device "
                               f"with lana lut calibrate)[/]")
            return {"calibration": "other device"}
        from lana.verify import STATISTIC

        if (existing and existing.get("pool") == c.pool
                and existing.get("statistic", "median") == STATISTIC):
            self.console.print(f"LUT calibration for the {c.pool} pool: {existing.get('model')}, "
                               f"held-out error {_held_out_text(existing)}")
            return {"calibration": "kept"}
        from lana.calibrate import AFFINE_FITS, TooFewArchitectures, calibrate

        samples = max(6, c.calibrate)  # a third is held out to report on
        with self.console.status(f"calibrating the LUT: {samples} architectures of the "
                                 f"{c.pool} pool measured end to end"):
            try:
                # Affine fits only: the search exploits per-family terms (see AFFINE_FITS).
                # Fitted to fastest iterations, as verify and validation measure networks.
                rep = calibrate(target, c.device, teacher=c.teacher, samples=samples,
                                seed=c.seed, pool=c.pool, candidates=AFFINE_FITS,
                                repeats=c.repeats, statistic=STATISTIC,
                                drift_correction=False)
            except TooFewArchitectures as exc:
                self.console.print(f"[yellow]not calibrated: {exc}; the search uses the LUT "
                                   f"sum[/]")
                return {"calibration": "too few architectures"}
        held = {"held_out": {"before": rep.before, "after": rep.after}}
        self.console.print(f"calibrated the LUT ({rep.fit.name}) on {samples} architectures: "
                           f"held-out error {_held_out_text(held)}")
        return {"calibration": "fitted", "calibration_s": round(rep.seconds, 1)}

    def stage_pretrain(self) -> dict:
        from lana.pretrain import pretrain

        c = self.config
        kwargs: dict[str, Any] = {"seed": c.seed, "resume": True, "images": c.images}
        if c.pretrain_epochs is not None:
            kwargs["epochs"] = c.pretrain_epochs
        if c.pool == "single-shot":
            return {"skipped": "single-shot pool has nothing to distil"}
        pretrain(self.teacher, c.pool, c.data, self.path("pretrain"), **kwargs)
        return {}

    def _pretrain_dir(self) -> Path | None:
        return None if self.config.pool == "single-shot" else self.path("pretrain")

    def stage_score(self) -> dict:
        from lana.score import score

        c = self.config
        kwargs: dict[str, Any] = {"seed": c.seed}
        if c.score_samples is not None:
            kwargs["samples"] = c.score_samples
        score(self._pretrain_dir(), self.teacher, c.pool, c.data, self.path("scores.json"),
              **kwargs)
        return {}

    def stage_search(self) -> dict:
        from lana.search.report import search_files

        c = self.config
        # The target budget plus a sweep, so the report can draw the front around the chosen point.
        from lana.search.files import load_table

        table = load_table(self.path("scores.json"), [self.path("lut.json")])
        name = table.table_names[0]
        floor = table.minimum(name) / table.total(name, table.teacher_choice())
        sweep = [f"{f / 10:.1f}x" for f in range(2, 10)]
        budgets = [c.budget] + [b for b in sweep if b != c.budget and float(b[:-1]) > floor * 1.02]
        report = search_files(luts=[str(self.path("lut.json"))], scores=str(self.path("scores.json")),
                              budgets=[",".join(budgets)], out=str(self.path("search.json")), k=c.k,
                              overlap=c.overlap, single_shot=c.pool == "single-shot")
        target = next((t for t in report["targets"]
                       if next(iter(t["budgets"].values()))["given"] == c.budget),
                      report["targets"][0])
        self.console.print(f"{target['found']} architectures at {c.budget} in "
                           f"{report['time_s']:.2f} s (max gap {100 * (target['max_gap'] or 0):.2f} %)")
        return {"found": target["found"]}

    def stage_verify(self) -> dict:
        from lana.distributed import progress_bar
        from lana.lut import Lut
        from lana.verify import unverified, verify

        c = self.config
        lut = Lut.load(self.path("lut.json"), teacher=c.teacher)
        if not self._measures(lut):
            reason = (f"the LUT was measured on {lut.preset!r}, not on the run's device "
                      f"{c.device!r}; the search's candidates go to selection unmeasured")
            self.console.print(f"[yellow]{reason}[/]")
            unverified(self.path("search.json"), c.budget, reason, out=self.path("verify.json"))
            return {"skipped": reason}
        bar = progress_bar(True)
        with bar:
            task = bar.add_task("measuring candidates", total=None)

            def progress(label: str, done: int, total: int) -> None:
                bar.update(task, description=label, completed=done, total=total)

            res = verify(self.path("search.json"), self.path("lut.json"), c.device, c.budget,
                         scores=self.path("scores.json"), out=self.path("verify.json"), k=c.k,
                         overlap=c.overlap, rounds=c.verify_rounds, repeats=c.repeats,
                         progress=progress, log=self.console.print)
        self.console.print(f"{len(res['architectures'])} of {len(res['measured'])} measured "
                           f"candidates go to selection"
                           + (" (none met the budget: the fastest)" if res["fallback"] else ""))
        return {"passed": res["passed"], "researched": res["researched"]}

    def stage_select(self) -> dict:
        from lana.select import select

        c = self.config
        select(self.path("verify.json"), self._pretrain_dir(), self.teacher, c.data,
               self.path("select.json"), budget=c.budget, seed=c.seed)
        return {}

    def stage_finetune(self) -> dict:
        from lana.finetune import finetune

        c = self.config
        kwargs: dict[str, Any] = {"seed": c.seed, "resume": True, "images": c.images}
        if c.finetune_epochs is not None:
            kwargs["epochs"] = c.finetune_epochs
        finetune(self.path("select.json"), self.teacher, self._pretrain_dir(), c.data,
                 self.path("finetune"), **kwargs)
        return {}

    def stage_validate(self) -> dict:
        from lana.run_report import validate_run

        validate_run(self)
        return {}

    def stage_report(self) -> dict:
        from lana.run_report import write_report

        write_report(self)
        return {}


def _held_out_text(calibration: dict) -> str:
    held = calibration.get("held_out") or {}
    before, after = held.get("before") or {}, held.get("after") or {}
    if "median_abs" not in before or "median_abs" not in after:
        return "not recorded"
    return (f"median {100 * before['median_abs']:.1f}% -> {100 * after['median_abs']:.1f}%, "
            f"worst {100 * before.get('max_abs', math.nan):.1f}% -> "
            f"{100 * after.get('max_abs', math.nan):.1f}%")


def run(teacher: str = "demo", device: str = "cpu-ort", budget: str = "0.5x", pool: str = "small",
        data: str | None = None, out: str | Path = "runs/demo", *, force: bool = False,
        **settings: Any) -> dict[str, Any]:
    """Run (or resume) the whole pipeline into ``out``; returns the summary dict."""
    if data is not None and not Path(data).exists():
        raise RunError(f"data directory {data} does not exist; pass an ImageFolder root "
                       f"(train/<class>/*, val/<class>/*) or leave --data out for the embedded digits")
    from lana.teachers import is_user_module, parse_shape

    if settings.get("teacher_weights"):  # recorded absolute: the run resumes from anywhere
        settings["teacher_weights"] = str(Path(settings["teacher_weights"]).resolve())
    if is_user_module(teacher):  # the same, and the name every artifact of the run records
        path, _, factory = teacher.rpartition(":")
        teacher = f"{Path(path).expanduser().resolve()}:{factory}"
    if settings.get("input_shape") is not None:
        settings["input_shape"] = ",".join(map(str, parse_shape(settings["input_shape"])))
    config = RunConfig(teacher=teacher, device=device, budget=budget, pool=pool,
                       data=str(Path(data).resolve()) if data else None, **settings)
    return Pipeline(config, out, force=force).run()
