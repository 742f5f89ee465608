"""Opening a file never runs code: checkpoints load with ``weights_only=True`` and CIFAR's pickles
through an unpickler that builds plain data and NumPy arrays only."""

from __future__ import annotations

import ast
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from augmentbn.cli import main
from augmentbn.data import CorruptFileError, build_dataset
from augmentbn.data.safe_pickle import load_plain
from augmentbn.train import CheckpointError, TrainConfig, evaluate_checkpoint
from augmentbn.train.checkpoint import FORMAT, load_checkpoint

pytest.importorskip("sklearn", reason="training needs the train extra")


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears if the payload runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_checkpoint_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    config = TrainConfig(depth=8, checkpoint=str(tmp_path / "run")).to_dict()
    torch.save({"format": FORMAT, "config": config, "epoch": 1, "model": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pt.*(io|builtins)\.open"):
        evaluate_checkpoint(evil)
    assert main(["eval", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "Traceback" not in err
    assert main(["train", "-e", "--resume", str(evil)]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()
    # the same file is a working exploit for an unsafe load, so the test can fail
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_checkpoints_hold_only_plain_data(tmp_path):
    from augmentbn.train import train

    config = TrainConfig(
        depth=8, epochs=1, train_batch=64, image_size=8, device="cpu", checkpoint=str(tmp_path)
    )
    train(config.replace(norm="nabn", schedule=[1]))
    state = load_checkpoint(tmp_path / "last.pt", resume=True)  # weights_only=True inside

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str | int) and plain(v) for k, v in value.items())
        if isinstance(value, list | tuple):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, str | int | float | bool | torch.Tensor)

    assert plain(state)
    assert isinstance(state["rng"]["numpy"]["state"]["key"], list)


# --- CIFAR's pickles ------------------------------------------------------------------------


def _s(text: str | bytes) -> bytes:
    """A Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle wrote it."""
    data = text if isinstance(text, bytes) else text.encode("latin-1")
    if len(data) < 256:
        return pickle.SHORT_BINSTRING + bytes([len(data)]) + data
    return pickle.BINSTRING + struct.pack("<i", len(data)) + data


def _i(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def python2_pickle(entries: dict) -> bytes:
    """``entries`` (str keys; 2-D uint8 arrays, lists of ints or of str) pickled as Python 2's
    cPickle wrote CIFAR's files: protocol 2, ``numpy.core.multiarray._reconstruct``, byte
    strings as ``str``."""
    p = pickle
    out = [p.PROTO + b"\x02", p.EMPTY_DICT, p.MARK]
    for key, value in entries.items():
        out.append(_s(key))
        if isinstance(value, np.ndarray):
            rows, cols = value.shape
            out += [
                p.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n",
                p.GLOBAL + b"numpy\nndarray\n",
                _i(0) + p.TUPLE1 + _s("b") + p.TUPLE3 + p.REDUCE,
                p.MARK + _i(1) + _i(rows) + _i(cols) + p.TUPLE2,
                p.GLOBAL + b"numpy\ndtype\n" + _s("u1") + _i(0) + _i(1) + p.TUPLE3 + p.REDUCE,
                p.MARK + _i(3) + _s("|") + p.NONE * 3 + _i(-1) + _i(-1) + _i(0) + p.TUPLE,
                p.BUILD + p.NEWFALSE + _s(value.tobytes()) + p.TUPLE + p.BUILD,
            ]
        else:
            items = [_i(v) if isinstance(v, int) else _s(v) for v in value]
            out += [p.EMPTY_LIST, p.MARK, *items, p.APPENDS]
    return b"".join([*out, p.SETITEMS, p.STOP])


CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def write_python2_cifar10(root: Path, per_batch: int = 10) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [k % 10 for k in range(per_batch)],
        }
        (folder / name).write_bytes(python2_pickle(batch))
    (folder / "batches.meta").write_bytes(python2_pickle({"label_names": CIFAR10_NAMES}))
    return folder


def test_python2_cifar_files_read_as_before(tmp_path):
    folder = write_python2_cifar10(tmp_path)
    blob = (folder / "test_batch").read_bytes()
    reference = pickle.loads(blob, encoding="latin1")  # what the unrestricted loader gives
    ours = load_plain(io.BytesIO(blob), encoding="latin1")
    assert ours["labels"] == reference["labels"]
    assert ours["data"].dtype == np.uint8 and np.array_equal(ours["data"], reference["data"])
    ds = build_dataset("cifar10", tmp_path, "test")
    assert ds.info.class_names == tuple(CIFAR10_NAMES)
    assert torch.equal(ds.images, torch.from_numpy(reference["data"].reshape(-1, 3, 32, 32)))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_unpickler_reads_arrays_of_every_protocol(protocol):
    arrays = {
        "u8": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "f32": np.linspace(0, 1, 5, dtype=np.float32),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
    }
    value = {**arrays, "names": ["a", b"b"], "n": 3, "x": 0.5, "t": (1, None, True)}
    out = load_plain(io.BytesIO(pickle.dumps(value, protocol=protocol)))
    for key, array in arrays.items():
        assert out[key].dtype == array.dtype and np.array_equal(out[key], array), key
    assert (out["names"], out["n"], out["x"], out["t"]) == (["a", b"b"], 3, 0.5, (1, None, True))


@pytest.mark.parametrize(
    "payload,match",
    [
        (lambda marker: Payload(marker), r"refusing (io|builtins)\.open"),
        (lambda marker: np.array([Payload(marker)], dtype=object), "refusing"),
        (lambda marker: np.array(["plain", 1], dtype=object), "object array"),
    ],
)
def test_planted_cifar_meta_and_batch_do_not_run(tmp_path, payload, match):
    marker = tmp_path / "pwned"
    folder = write_python2_cifar10(tmp_path)
    meta = folder / "batches.meta"
    good_meta = meta.read_bytes()
    with open(meta, "wb") as f:
        pickle.dump({"label_names": CIFAR10_NAMES, "x": payload(marker)}, f)
    with pytest.raises(CorruptFileError, match=f"batches.meta.*{match}"):
        build_dataset("cifar10", tmp_path, "test")
    meta.write_bytes(good_meta)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": payload(marker), "labels": []}, f, protocol=2)
    with pytest.raises(CorruptFileError, match=f"test_batch.*{match}"):
        build_dataset("cifar10", tmp_path, "test")
    assert not marker.exists()


def _unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that could unpickle arbitrary objects."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner, name = ast.unparse(node.func.value), node.func.attr
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if (
            (owner == "pickle" and name in ("load", "loads", "Unpickler"))
            or (owner == "torch" and name == "load" and keywords.get("weights_only") != "True")
            or (owner in ("np", "numpy") and keywords.get("allow_pickle", "False") != "False")
        ):
            found.append(ast.unparse(node))
    return found


def test_no_unsafe_load_left_in_the_package():
    import augmentbn

    assert _unsafe_loads("torch.load(f)\npickle.load(f)\nnp.load(f, allow_pickle=True)") == [
        "torch.load(f)",
        "pickle.load(f)",
        "np.load(f, allow_pickle=True)",
    ]
    src = Path(augmentbn.__file__).parent
    hits = {p.name: _unsafe_loads(p.read_text()) for p in src.rglob("*.py")}
    assert {name: calls for name, calls in hits.items() if calls} == {}
