"""The notebooks in ``examples/`` run from top to bottom, and are committed with their outputs."""

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the dev extra")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the dev extra")
pytest.importorskip("ipykernel", reason="the notebook test needs the dev extra")
pytest.importorskip("pytorch_grad_cam", reason="the notebook draws CAMs (cam extra)")
pytest.importorskip("sklearn", reason="the notebook trains on digits (train extra)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "cam_bn_vs_nabn.ipynb"


def _outputs(notebook):
    text, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            text.append(output.get("text", ""))
            images += "image/png" in output.get("data", {})
    return "".join(text), images


def _check(notebook):
    text, images = _outputs(notebook)
    assert images == 1  # the CAM grid
    for norm in ("bn", "nabn"):
        accuracy = re.search(rf"{norm}: last training loss [\d.]+, test accuracy ([\d.]+)", text)
        share = re.search(rf"{norm}: share of CAM energy on the strokes ([\d.]+)", text)
        assert accuracy and 0 <= float(accuracy[1]) <= 1, text
        assert share and 0 <= float(share[1]) <= 1, text
    assert "12 of 20 BatchNorm layers are NABN now" in text


def test_committed_notebook_holds_its_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    _check(notebook)


@pytest.mark.slow
def test_notebook_runs(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    _check(notebook)
