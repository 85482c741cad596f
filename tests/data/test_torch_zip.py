"""torch.save's zip format read and written with numpy only; reading runs no code from the file."""

import collections
import zipfile

import numpy as np
import pytest

from sgg_jax.data.torch_zip import Opaque, read_torch_zip, write_torch_zip
from sgg_jax.errors import DataError


def test_round_trip_of_a_checkpoint_layout(tmp_path):
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    checkpoint = {
        "model": collections.OrderedDict(
            [("w", weight), ("steps", np.array(7, np.int64)), ("empty", np.zeros((0, 2)))]
        ),
        "iteration": 50000,
        "scheduler": {"milestones": [10, 20], "gamma": 0.1, "name": "warmup", "on": True},
    }
    path = tmp_path / "model.pth"
    write_torch_zip(checkpoint, path)
    loaded = read_torch_zip(path)
    assert isinstance(loaded["model"], collections.OrderedDict)
    assert list(loaded["model"]) == ["w", "steps", "empty"]
    np.testing.assert_array_equal(loaded["model"]["w"], weight)
    assert loaded["model"]["w"].dtype == np.float32 and loaded["model"]["steps"] == 7
    assert loaded["model"]["empty"].shape == (0, 2)
    assert loaded["iteration"] == 50000 and loaded["scheduler"]["milestones"] == [10, 20]


def _zip_with_pickle(path, data_pkl, storages=()):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, data in storages:
            archive.writestr(f"archive/data/{key}", data)


def test_globals_of_the_file_are_never_called(tmp_path):
    marker = tmp_path / "ran"
    # {"x": os.system("touch <marker>")}, as pickle opcodes
    payload = f"touch {marker}".encode()
    data_pkl = (
        b"\x80\x02}X\x01\x00\x00\x00xcos\nsystem\n(X"
        + len(payload).to_bytes(4, "little")
        + payload
        + b"tRs."
    )
    path = tmp_path / "evil.pth"
    _zip_with_pickle(path, data_pkl)
    loaded = read_torch_zip(path)
    assert not marker.exists()
    assert isinstance(loaded["x"], Opaque) and "os.system" in repr(loaded["x"])
    # BUILD on an allowed name (setting attributes of the tensor rebuild) leaves the reader intact.
    data_pkl = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x01\x00\x00\x00aK\x01sb."
    _zip_with_pickle(path, data_pkl)
    read_torch_zip(path)
    write_torch_zip({"w": np.ones(3, np.float32)}, path)
    np.testing.assert_array_equal(read_torch_zip(path)["w"], np.ones(3, np.float32))


def test_a_tensor_reading_past_its_storage_is_one_data_error(tmp_path):
    path = tmp_path / "short.pth"
    write_torch_zip({"w": np.ones((4, 4), np.float32)}, path)
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["archive/data/0"] = entries["archive/data/0"][:20]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(DataError, match=r"short.pth: malformed tensor data \(storage .* truncated"):
        read_torch_zip(path)
