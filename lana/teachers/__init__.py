"""Teacher networks: a registry of built-in teachers, user modules, and their traced layers.

``create_teacher(name)`` is the only way in: ``name`` is a registered teacher (``lana teachers``
lists them) or ``path/to/file.py:factory`` for any ``nn.Module`` a user factory returns.  The
result is a :class:`Teacher` holding the eval-mode model and its ordered :class:`Layer` records
(module path, input/output shape, stride, signature), found by tracing one example input.

Built-in teachers register themselves with :func:`register_teacher` (like timm's
``register_model``); tests parametrize over :func:`list_teacher_names`, so a new teacher is
tested by being registered.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lana.errors import LanaError, UnknownNameError
from lana.spec import Shape
from lana.teachers.base import (Layer, SelectorError, ShapeAdapter, Teacher, TeacherInfo,
                                TraceError, layer_signature, module_tree, select_modules,
                                selector_matches, set_submodule, trace_layers)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class WeightsError(LanaError):
    """A weights file that is missing, unreadable, or does not fit the teacher."""


@dataclass(frozen=True)
class TeacherEntry:
    """A registered teacher factory and what is known about it without building it."""

    name: str  # registry name, e.g. "efficientnet_b2"
    factory: Callable  # factory(num_classes=...) -> nn.Module
    input_shape: Shape  # (C, H, W) the teacher is traced and profiled at
    num_classes: int  # classifier outputs of the default build
    selector: str  # glob over module names that picks the layers
    timm_compatible: bool  # a timm state_dict of ``timm_name`` loads strictly
    timm_name: str | None  # the matching timm model, if any
    description: str  # one line for ``lana teachers``
    weights: str | None  # file under lana/teachers/weights/ loaded when pretrained=True


_REGISTRY: dict[str, TeacherEntry] = {}


def register_teacher(name: str, *, input_shape: Shape, num_classes: int, selector: str,
                     timm_compatible: bool = False, description: str = "",
                     timm_name: str | None = None, weights: str | None = None) -> Callable:
    """Decorator recording a teacher factory under ``name``."""

    def wrap(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"teacher {name!r} is registered twice")
        doc_lines = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = TeacherEntry(
            name, factory, tuple(int(v) for v in input_shape), int(num_classes), selector,
            bool(timm_compatible), timm_name if timm_compatible else None,
            description or (doc_lines[0] if doc_lines else ""), weights)
        return factory

    return wrap


def list_teacher_names() -> list[str]:
    """Registered teacher names, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> TeacherEntry:
    """The registry entry of ``name``; :class:`UnknownNameError` lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(
            f"unknown teacher {name!r}{hint}; valid names: {', '.join(list_teacher_names())}, "
            f"or 'path/to/file.py:factory' for your own module") from None


def list_teachers() -> list[TeacherInfo]:
    """Every registered teacher with its layer and parameter counts.

    Models are built on the meta device (no memory, no init cost), so listing is fast even for
    the biggest teachers.
    """
    infos = []
    for name in list_teacher_names():
        e = _REGISTRY[name]
        with torch.device("meta"):
            model = e.factory(num_classes=e.num_classes)
        n_layers = len(select_modules(model, e.selector))
        params = sum(p.numel() for p in model.parameters())
        infos.append(TeacherInfo(name, e.input_shape, e.num_classes, n_layers, e.description,
                                 e.timm_compatible, e.timm_name, params))
    return infos


# ---------------------------------------------------------------------------------------------
# Building teachers


def _load_factory_file(spec: str) -> tuple[Callable, str]:
    path_text, _, attr = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise LanaError(f"teacher file {str(path)!r} does not exist; "
                        f"pass 'path/to/file.py:factory'")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"lana_user_teacher_{digest}"
    mod_spec = importlib.util.spec_from_file_location(module_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise LanaError(f"cannot import {str(path)!r} as a Python module; pass a .py file")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[module_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # a user file can raise anything on import
        sys.modules.pop(module_name, None)
        raise LanaError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}; "
                        f"fix the file so that 'python {path}' runs") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module_name)
        raise LanaError(f"{str(path)!r} has no callable {attr!r}; callables defined there: "
                        f"{', '.join(found) or 'none'}")
    return factory, str(path)


def _input_shape_of(model, given: Shape | str | None, name: str) -> Shape:
    if given is not None:
        return parse_shape(given)
    shape = getattr(model, "input_shape", None)
    if shape is None:
        for cfg_name in ("default_cfg", "pretrained_cfg"):
            cfg = getattr(model, cfg_name, None)
            if isinstance(cfg, dict) and cfg.get("input_size"):
                shape = cfg["input_size"]
                break
    if shape is None:
        raise LanaError(f"the input shape of {name} is unknown; pass --input-shape C,H,W "
                        f"(input_shape=(C, H, W) from Python) or set model.input_shape")
    return parse_shape(shape)


def parse_shape(value: Shape | str | list | tuple) -> Shape:
    """``"3,224,224"`` or ``(3, 224, 224)`` -> ``(3, 224, 224)``."""
    try:
        parts = value.replace("x", ",").split(",") if isinstance(value, str) else list(value)
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise LanaError(f"input shape {value!r} is not C,H,W with positive sizes; "
                        f"write it like 3,224,224")
    return shape  # type: ignore[return-value]


def read_state_dict(path: str | Path) -> dict:
    """The state_dict in ``path``: a plain state_dict, or a checkpoint dict holding one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist; pass a state_dict file "
                           f"saved with torch.save")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise WeightsError(f"cannot read weights file {str(path)!r} ({type(exc).__name__}); "
                           f"pass a state_dict saved with torch.save") from exc
    if isinstance(data, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(hasattr(v, "shape") for v in data.values()):
        raise WeightsError(f"{str(path)!r} holds no state_dict; save model.state_dict() "
                           f"with torch.save")
    return data


def load_weights(model, path: str | Path, name: str) -> None:
    """Load a state_dict strictly; a mismatch is one line listing the first offending keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)}!={tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        def first(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
        parts = [f"{label}: {first(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if keys]
        raise WeightsError(f"weights {str(path)!r} do not fit teacher {name} ("
                           f"{'; '.join(parts)}); pass a state_dict of the same architecture")
    model.load_state_dict(state, strict=True)


def is_user_module(name: str) -> bool:
    """Whether ``name`` is ``path/to/file.py:factory`` rather than a registered teacher."""
    return ":" in name and name.rpartition(":")[0].endswith(".py")


def recorded_layout(name: str, record: dict | None, selector: str | None = None,
                    input_shape: Shape | str | None = None) -> tuple[str | None, object]:
    """``(selector, input_shape)`` for a user module, defaulting each to what ``record`` holds.

    ``record`` is an artifact made from the same teacher (a LUT's or a pretraining's header), so
    a user module's selector and input shape are given once, to the command that made it.
    Registry teachers keep their registered layout.
    """
    if record and is_user_module(name):
        selector = selector or record.get("selector")
        if input_shape is None and record.get("input_shape"):
            input_shape = tuple(record["input_shape"])
    return selector, input_shape


def factory_loads_weights(factory: Callable, model: torch.nn.Module) -> bool:
    """Whether a user factory returns trained weights rather than a fresh initialisation.

    It is called once more under another random seed: an initialisation then differs, loaded
    weights do not.  (A factory that seeds its own random initialisation looks trained as well.)
    A module without parameters has nothing trained.
    """
    import secrets

    first = [p.detach() for p in model.parameters()]
    if not first:
        return False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(secrets.randbits(63))
        try:
            again = [p.detach() for p in factory().parameters()]
        except Exception:  # noqa: BLE001 - it ran once; failing twice would be the user's bug
            return False
    return len(again) == len(first) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, again))


def create_teacher(name: str, *, selector: str | None = None,
                   weights: str | Path | None = None, pretrained: bool = True,
                   input_shape: Shape | str | None = None) -> Teacher:
    """Build a teacher and trace its layers.

    ``name`` is a registered teacher or ``path/to/file.py:factory`` (the factory returns an
    ``nn.Module``; its input shape comes from ``input_shape``, or the module's ``input_shape``
    or ``default_cfg["input_size"]`` attribute).  ``selector`` overrides the registered layer
    glob; a user module without one takes its ``lana_selector`` attribute, so that a module
    which names its layers works in every command with no flags.  ``weights`` loads a state_dict
    file strictly; otherwise ``pretrained=True`` loads the weights shipped with the teacher, if it
    has any (only ``demo`` does: nothing is downloaded), and takes a user module's weights as the
    factory returns them when the factory loads them (see :func:`factory_loads_weights`); else the
    teacher is randomly initialised and ``Teacher.pretrained`` is False.
    """
    entry = None
    description, timm_name = "", None
    if is_user_module(name):
        factory, _ = _load_factory_file(name)
        try:
            model = factory()
        except Exception as exc:  # user code can raise anything
            raise LanaError(f"calling {name}() failed: {type(exc).__name__}: {exc}; "
                            f"fix the factory so that it returns the network") from exc
        if not isinstance(model, torch.nn.Module):
            raise LanaError(f"{name} returned {type(model).__name__}, not a torch.nn.Module; "
                            f"make the factory return the network")
        shape = _input_shape_of(model, input_shape, name)
        selector = selector or getattr(model, "lana_selector", None)
        if not selector:
            raise SelectorError(
                f"{name} needs a layer selector; pass --selector with a glob over these module "
                f"names (e.g. 'blocks.*.*'), or set model.lana_selector:\n{module_tree(model)}")
        if not isinstance(selector, str):
            raise SelectorError(f"{name}: model.lana_selector is {type(selector).__name__}, not "
                                f"a glob string such as 'blocks.*.*'; set it to one")
    else:
        entry = get_entry(name)
        model = entry.factory(num_classes=entry.num_classes)
        shape = parse_shape(input_shape) if input_shape is not None else entry.input_shape
        selector = selector or entry.selector
        description, timm_name = entry.description, entry.timm_name

    loaded: str | None = None
    trained = False
    if weights is not None:
        load_weights(model, weights, name)
        loaded = str(weights)
    elif pretrained and entry is None:
        trained = factory_loads_weights(factory, model)
    elif pretrained and entry is not None and entry.weights:
        shipped = WEIGHTS_DIR / entry.weights
        if not shipped.is_file():
            raise WeightsError(f"the shipped weights {str(shipped)!r} are missing; reinstall lana "
                               f"or recreate them with "
                               f"'lana train-teacher --teacher {name} --out {shipped}'")
        load_weights(model, shipped, name)
        loaded = str(shipped)
    model.eval()
    layers, out_shape = trace_layers(model, selector, shape)
    num_classes = entry.num_classes if entry is not None else (
        int(getattr(model, "num_classes", 0)) or (int(out_shape[1]) if len(out_shape) >= 2 else 0))
    return Teacher(name, model, shape, num_classes, layers, selector=selector,
                   pretrained=loaded is not None or trained, description=description,
                   timm_name=timm_name, weights=loaded)


__all__ = ["Layer", "SelectorError", "ShapeAdapter", "Teacher", "TeacherEntry", "TeacherInfo",
           "TraceError", "WeightsError", "create_teacher", "factory_loads_weights", "get_entry",
           "is_user_module", "layer_signature", "list_teacher_names", "list_teachers",
           "load_weights", "module_tree", "parse_shape", "read_state_dict", "recorded_layout",
           "register_teacher", "select_modules", "selector_matches", "set_submodule",
           "trace_layers"]

# Built-in teachers register themselves on import (after the registry above exists).
from lana.teachers import demo, efficientnet, efficientnet_v2, resnest  # noqa: E402,F401
