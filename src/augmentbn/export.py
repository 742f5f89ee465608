"""Export a model for inference, and check the exported file against PyTorch.

Formats (:data:`FORMATS`), each with a dynamic batch axis:

- ``onnx``: ``torch.onnx.export(..., dynamo=True)``, run by onnxruntime for the check
  (``pip install "augmentbn[export]"``);
- ``pt2``: ``torch.export.export``, saved with ``torch.export.save``;
- ``torchscript``: ``torch.jit.trace``, saved with ``torch.jit.save`` (``torch.jit`` is
  deprecated since torch 2.14; prefer ``pt2`` or ``onnx``).

augmentbn's layers record plain PyTorch operators under every exporter (``layers/_portable.py``),
so an exported file runs where augmentbn and its compiled operators are not installed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["FORMATS", "ExportError", "export_model", "load_exported", "max_difference"]

FORMATS = ("onnx", "pt2", "torchscript")

Runner = Callable[[Tensor], Tensor]


class ExportError(RuntimeError):
    """A model that cannot be exported or checked; the message says why and what to do."""


def _dynamic_batch() -> tuple[dict[int, object], ...]:
    return ({0: torch.export.Dim("batch", min=1)},)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without the exporters' deprecation and tracer warnings, which concern torch, not the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _onnx_modules():
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(
            f'ONNX export needs onnx and onnxscript ({error}): pip install "augmentbn[export]"'
        ) from error


def export_model(model: nn.Module, example: Tensor, path: str | Path, format: str) -> None:
    """Write ``model`` (in evaluation mode, where it is left) to ``path`` in ``format``, traced
    on ``example`` (a batch of at least 2 inputs) with a dynamic batch axis, atomically."""
    from .train.checkpoint import atomic_write

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    if example.shape[0] < 2:
        raise ExportError("export needs an example batch of at least 2 inputs")
    model.eval()
    args = (example,)
    try:
        with _quiet(), torch.no_grad():
            if format == "onnx":
                _onnx_modules()
                program = torch.onnx.export(
                    model,
                    args,
                    dynamo=True,
                    dynamic_shapes=_dynamic_batch(),
                    input_names=["input"],
                    output_names=["output"],
                    verbose=False,
                )
                atomic_write(path, lambda tmp: program.save(str(tmp)))
            elif format == "pt2":
                program = torch.export.export(model, args, dynamic_shapes=_dynamic_batch())
                atomic_write(path, lambda tmp: _save_pt2(program, tmp))
            else:
                traced = torch.jit.trace(model, args)
                atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp)))
    except ExportError:
        raise
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportError(
            f"{format} export of {type(model).__name__} failed: {type(error).__name__}: {first}"
        ) from error


def _save_pt2(program, tmp: Path) -> None:
    with open(tmp, "wb") as file:  # a file object: torch.export.save wants a .pt2 name
        torch.export.save(program, file)


def load_exported(path: str | Path, format: str) -> Runner:
    """A function running the exported file at ``path`` on a batch: onnxruntime for ``onnx``,
    ``torch.export.load`` for ``pt2``, ``torch.jit.load`` for ``torchscript``."""
    path = str(path)
    if format == "onnx":
        try:
            import onnxruntime
        except ImportError as error:
            raise ExportError(
                'checking an ONNX file needs onnxruntime: pip install "augmentbn[export]" '
                "(or pass --no-check)"
            ) from error
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(batch: Tensor) -> Tensor:
            output = session.run(None, {name: batch.detach().cpu().numpy()})[0]
            return torch.from_numpy(output)

        return run
    if format == "pt2":
        module = torch.export.load(path).module()
    elif format == "torchscript":
        with _quiet():
            module = torch.jit.load(path, map_location="cpu")
    else:
        raise ExportError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")

    def run_module(batch: Tensor) -> Tensor:
        with torch.no_grad():
            return module(batch)

    return run_module


def max_difference(model: nn.Module, exported: Runner, batch: Tensor) -> float:
    """The largest absolute difference between ``model`` (in evaluation mode) and ``exported``
    on ``batch``."""
    model.eval()
    with torch.no_grad():
        expected = model(batch)
    actual = exported(batch)
    if actual.shape != expected.shape:
        raise ExportError(
            f"the exported model returns shape {tuple(actual.shape)} on a batch of "
            f"{batch.shape[0]}, PyTorch {tuple(expected.shape)}"
        )
    return (actual.to(expected.dtype) - expected).abs().max().item()
