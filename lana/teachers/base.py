"""Teachers: a trained network plus the ordered list of its replaceable layers.

LANA keeps, replaces or skips whole *layers* of a teacher (paper §2.1).  Which modules count as
layers is decided by a *selector*, a glob over module names (``blocks.*.*`` picks every
EfficientNet block).  Shapes are never declared by hand: :func:`trace_layers` runs one example
input through the network with forward hooks on the selected modules and records, in execution
order, each layer's input shape, output shape and stride.  Every downstream stage (op pool,
profiling, search, assembly) works from these :class:`Layer` records.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lana.errors import LanaError
from lana.spec import OpSpec, Shape


class SelectorError(LanaError):
    """A selector matching nothing, nested or shared modules, or a layer not run exactly once."""


class TraceError(LanaError):
    """The example input could not be traced through the teacher."""


@dataclass(frozen=True)
class Layer:
    """One replaceable unit of a teacher, as traced with an example input."""

    index: int  # 0..N-1 in execution order
    name: str  # module path in the teacher, e.g. "blocks.1.0"
    in_shape: Shape  # (C, H, W) of the layer input, batch excluded
    out_shape: Shape  # (C, H, W) of the layer output
    stride: int  # spatial reduction: ceil(in_H / stride) == out_H (1 keeps the resolution)
    signature: str  # 12 hex characters identifying the layer module and its shapes

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape), "stride": self.stride,
                "signature": self.signature}


@dataclass(frozen=True)
class TeacherInfo:
    """What ``lana teachers`` lists about one registered teacher."""

    name: str  # registry name
    input_shape: Shape  # (C, H, W) the teacher is traced and profiled at
    num_classes: int  # classifier outputs
    n_layers: int  # modules the default selector picks
    description: str  # one line
    timm_compatible: bool  # a timm state_dict of ``timm_name`` loads strictly
    timm_name: str | None = None  # the timm model whose state_dict matches, if any
    params: int = 0  # parameter count

    def to_dict(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "n_layers": self.n_layers,
                "params": self.params, "timm_compatible": self.timm_compatible,
                "timm_name": self.timm_name, "description": self.description}


# ---------------------------------------------------------------------------------------------
# Signatures


def layer_signature(module: nn.Module, in_shape: Shape, out_shape: Shape, stride: int) -> str:
    """Identify a layer by its module ``repr`` and shapes; identical blocks share a signature.

    The result is 12 hex characters of a sha256.  It always starts with a letter (``a``-``f``) so
    it is a valid string value in an op key (``teacher:sig=...``) and never reads as a number:
    the digest is re-salted with a counter until its first character is a letter, which is
    deterministic and changes nothing else about the hash.
    """
    payload = f"{module!r}|in={in_shape}|out={out_shape}|s={stride}".encode()
    salt = 0
    while True:
        digest = hashlib.sha256(payload if salt == 0 else payload + b"#%d" % salt).hexdigest()
        if digest[0] in "abcdef":
            return digest[:12]
        salt += 1


# ---------------------------------------------------------------------------------------------
# Selectors


def _split_selector(selector: str) -> list[str]:
    patterns = [p.strip() for p in selector.replace("|", ",").split(",")]
    patterns = [p for p in patterns if p]
    if not patterns:
        raise SelectorError(f"layer selector {selector!r} is empty; "
                            f"pass a glob such as 'blocks.*.*'")
    return patterns


def _match_parts(pattern: Sequence[str], name: Sequence[str]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_parts(rest, name[i:]) for i in range(len(name) + 1))
    return bool(name) and fnmatch.fnmatchcase(name[0], head) and _match_parts(rest, name[1:])


def selector_matches(selector: str, name: str) -> bool:
    """Whether module ``name`` is picked by ``selector``.

    A selector is one or more globs separated by commas; each glob is matched segment by segment
    on the dotted module path, so ``*`` never crosses a dot (``blocks.*.*`` picks ``blocks.1.0``
    but not ``blocks.1.0.conv_dw``) and ``**`` stands for any number of segments.
    """
    parts = name.split(".")
    return any(_match_parts(p.split("."), parts) for p in _split_selector(selector))


def module_tree(model: nn.Module, depth: int = 2, max_children: int = 8) -> str:
    """The top levels of ``model``'s module tree, indented, one module per line."""
    lines: list[str] = []

    def walk(module: nn.Module, prefix: str, level: int) -> None:
        children = list(module.named_children())
        for i, (child_name, child) in enumerate(children):
            if i == max_children:
                lines.append("  " * (level + 1) + f"... ({len(children) - max_children} more)")
                break
            full = f"{prefix}.{child_name}" if prefix else child_name
            lines.append("  " * (level + 1) + f"{full} ({type(child).__name__})")
            if level + 1 < depth:
                walk(child, full, level + 1)

    walk(model, "", 0)
    return "\n".join(lines) if lines else "  (the module has no sub-modules)"


def select_modules(model: nn.Module, selector: str) -> list[str]:
    """Names of the modules ``selector`` picks, in registration order.

    Raises :class:`SelectorError` when nothing matches (the message shows the module tree), when
    one match contains another (a layer must not be part of another layer), or when one module
    is matched under two names (it is shared, so it would run as two layers).
    """
    matched = [(n, m) for n, m in model.named_modules(remove_duplicate=False)
               if n and selector_matches(selector, n)]
    names = [n for n, _ in matched]
    if not names:
        raise SelectorError(
            f"layer selector {selector!r} matches no module of {type(model).__name__}; "
            f"pick a glob over these module names (e.g. 'blocks.*.*'):\n{module_tree(model)}")
    for outer in names:
        for inner in names:
            if inner.startswith(outer + "."):
                raise SelectorError(
                    f"layer selector {selector!r} matches nested modules {outer!r} and {inner!r}; "
                    f"make it match only one level (e.g. add or remove a '.*')")
    seen: dict[int, str] = {}
    for n, m in matched:
        if id(m) in seen:
            raise SelectorError(
                f"layer selector {selector!r} matches one module twice, as {seen[id(m)]!r} and "
                f"{n!r}; a layer must be a module of its own, so select only one of the names")
        seen[id(m)] = n
    return names


# ---------------------------------------------------------------------------------------------
# Tracing


def _shape_of(value: object, what: str, name: str) -> Shape:
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TraceError(
            f"layer {name!r}: {what} must be one (N, C, H, W) tensor, got {got}; "
            f"select modules that map one feature map to another")
    return (int(value.shape[1]), int(value.shape[2]), int(value.shape[3]))


def _run_traced(model: nn.Module, names: Sequence[str], input_shape: Shape,
                device: str) -> tuple[dict[str, list[tuple[Shape, Shape]]], list[str], tuple]:
    calls: dict[str, list[tuple[Shape, Shape]]] = {n: [] for n in names}
    order: list[str] = []
    handles = []

    def make_hook(layer_name: str):
        def hook(module, args, output):
            if not args:
                raise TraceError(f"layer {layer_name!r} was called without a positional input")
            in_shape = _shape_of(args[0], "its input", layer_name)
            out_shape = _shape_of(output, "its output", layer_name)
            calls[layer_name].append((in_shape, out_shape))
            order.append(layer_name)
        return hook

    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(make_hook(n)))
    try:
        with torch.no_grad():
            if device == "meta":
                # Shapes only: parameters and buffers are swapped for storage-less meta tensors,
                # so even a 528x528 EfficientNet-B6 traces instantly without computing anything.
                tensors = {k: torch.empty_like(v, device="meta")
                           for k, v in model.state_dict(keep_vars=True).items()}
                x = torch.zeros((1, *input_shape), device="meta")
                out = torch.func.functional_call(model, tensors, (x,), strict=False)
            else:
                param = next(model.parameters(), None)
                x = torch.zeros((1, *input_shape),
                                device=param.device if param is not None else "cpu")
                out = model(x)
    finally:
        for h in handles:
            h.remove()
    out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
    return calls, order, out_shape


def infer_stride(in_size: int, out_size: int) -> int:
    """The spatial stride of a layer: the smallest ``s`` with ``ceil(in / s) == out``.

    Plain ``in // out`` is wrong for odd sizes (a stride-2 conv maps 15 to 8); a layer that
    enlarges its input, or whose sizes fit no stride, gets ``max(1, round(in / out))``.
    """
    for s in range(1, in_size + 1):
        if -(-in_size // s) == out_size:
            return s
        if -(-in_size // s) < out_size:
            break
    return max(1, round(in_size / max(out_size, 1)))


def trace_layers(model: nn.Module, selector: str, input_shape: Shape
                 ) -> tuple[list[Layer], tuple[int, ...]]:
    """Trace ``model`` at ``input_shape`` and return its layers in execution order.

    Also returns the model output shape (batch 1).  Each selected module must run exactly once
    and map one 4-D tensor to another.  The trace runs on the meta device when the model allows
    (no compute at all) and falls back to a real CPU forward pass otherwise.
    """
    names = select_modules(model, selector)
    was_training = model.training
    model.eval()
    try:
        try:
            calls, order, out_shape = _run_traced(model, names, input_shape, "meta")
        except TraceError:
            raise
        except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError):
            # Models holding plain (unregistered) tensors or ops without meta kernels.
            calls, order, out_shape = _run_traced(model, names, input_shape, "cpu")
    except TraceError:
        raise
    except (RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(
            f"running an input of shape {tuple(input_shape)} through {type(model).__name__} failed "
            f"({first}); check the input shape (--input-shape C,H,W)") from exc
    finally:
        model.train(was_training)
    for n in names:
        if not calls[n]:
            raise SelectorError(
                f"module {n!r} matched by selector {selector!r} is never called in forward(); "
                f"narrow the selector to modules that run")
        if len(calls[n]) > 1:
            raise SelectorError(
                f"module {n!r} matched by selector {selector!r} runs {len(calls[n])} times per "
                f"forward; a layer must run exactly once, so select modules that are not reused")
    layers = []
    for index, n in enumerate(order):
        (in_shape, out_shape_l), = calls[n]
        stride = infer_stride(in_shape[1], out_shape_l[1])
        sig = layer_signature(model.get_submodule(n), in_shape, out_shape_l, stride)
        layers.append(Layer(index, n, in_shape, out_shape_l, stride, sig))
    return layers, out_shape


# ---------------------------------------------------------------------------------------------
# Shape adapter and module surgery


class ShapeAdapter(nn.Module):
    """A near-free stand-in for a layer: strided slice, then channel truncate or zero-pad.

    ``x[:, :, ::s, ::s]`` gives the layer's output resolution; channels are cut or padded with
    zeros to the output width; a spatial mismatch left by odd sizes is cropped or padded.  It has
    no parameters and exports to ONNX as Slice/Pad, so a network whose layers are all adapters
    measures the latency of the parts LANA never replaces.
    """

    def __init__(self, in_shape: Shape, out_shape: Shape, stride: int = 1) -> None:
        super().__init__()
        self.in_shape = tuple(int(v) for v in in_shape)
        self.out_shape = tuple(int(v) for v in out_shape)
        self.stride = max(1, int(stride))

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}, stride={self.stride}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s > 1:
            x = x[:, :, ::s, ::s]
        c_in, h_in, w_in = self.in_shape[0], -(-self.in_shape[1] // s), -(-self.in_shape[2] // s)
        c_out, h_out, w_out = self.out_shape
        if c_out < c_in:
            x = x[:, :c_out]
        if h_out < h_in or w_out < w_in:
            x = x[:, :, :min(h_in, h_out), :min(w_in, w_out)]
        pad_c, pad_h, pad_w = max(0, c_out - c_in), max(0, h_out - h_in), max(0, w_out - w_in)
        if pad_c or pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, pad_c))
        return x


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the sub-module at dotted ``path`` of ``root`` with ``module``."""
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, module)


# ---------------------------------------------------------------------------------------------
# Teacher


class Teacher:
    """A teacher network in eval mode and its traced layers.

    Built by :func:`lana.teachers.create_teacher`; everything downstream addresses layers by
    index ``0..N-1`` (execution order) and by module path (``layer.name``).
    """

    def __init__(self, name: str, model: nn.Module, input_shape: Shape, num_classes: int,
                 layers: list[Layer], *, selector: str, pretrained: bool = False,
                 description: str = "", timm_name: str | None = None,
                 weights: str | None = None) -> None:
        self.name = name
        self.model = model
        self.input_shape: Shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        self.num_classes = int(num_classes)
        self.layers = list(layers)
        self.selector = selector
        self.pretrained = bool(pretrained)
        self.description = description
        self.timm_name = timm_name
        self.weights = weights  # the state_dict file loaded, if any

    def __repr__(self) -> str:
        return (f"Teacher({self.name!r}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, layers={len(self.layers)}, "
                f"pretrained={self.pretrained})")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def layer_module(self, i: int) -> nn.Module:
        """The module of layer ``i`` inside :attr:`model` (not a copy)."""
        return self.model.get_submodule(self.layers[i].name)

    def teacher_spec(self, i: int) -> OpSpec:
        """The ``teacher`` family spec of layer ``i``: the layer kept as it is."""
        layer = self.layers[i]
        return OpSpec.make("teacher", layer.in_shape, layer.out_shape, layer.stride,
                           sig=layer.signature)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros((batch_size, *self.input_shape))

    def replaced(self, modules: Mapping[int, nn.Module]) -> nn.Module:
        """A deep copy of the teacher with layer ``i`` swapped for ``modules[i]``.

        The given modules are inserted as they are (not copied), so training the returned network
        trains them.  The copy is in eval mode; the teacher itself is untouched.
        """
        for i in modules:
            if not 0 <= int(i) < len(self.layers):
                raise LanaError(f"layer index {i} is out of range; {self.name} has layers "
                                f"0..{len(self.layers) - 1}")
        # Copy the model without the layers that are about to be replaced.
        memo: dict[int, object] = {}
        for i in modules:
            memo[id(self.layer_module(int(i)))] = None
        net = copy.deepcopy(self.model, memo)
        for i, module in modules.items():
            set_submodule(net, self.layers[int(i)].name, module)
        return net.eval()

    def skeleton(self) -> nn.Module:
        """The teacher with every layer replaced by a :class:`ShapeAdapter`.

        Its latency is what stays fixed whatever LANA picks per layer (stem, head, overhead): the
        ``fixed`` part of a latency table.
        """
        return self.replaced({l.index: ShapeAdapter(l.in_shape, l.out_shape, l.stride)
                              for l in self.layers})

    def layer_table(self) -> list[dict]:
        return [layer.to_dict() for layer in self.layers]


def iter_layer_pairs(layers: Iterable[Layer]) -> Iterable[tuple[Layer, Layer]]:
    """Consecutive ``(layer i, layer i+1)`` pairs, for checking that shapes chain."""
    prev = None
    for layer in layers:
        if prev is not None:
            yield prev, layer
        prev = layer
