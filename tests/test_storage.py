"""Atomic writes sit on the ground floor (`segkit.storage`, importing nothing of segkit but its errors);
`segkit.data.io` still offers them under their old names; `cfg.adapter()` is the one way from a config to its
competition's adapter."""
import pytest

from segkit import storage
from segkit.config import load_config
from segkit.data import io
from segkit.errors import ConfigError, StorageError
from test_imports import import_graph


def test_storage_is_the_ground_floor():
    graph = import_graph()
    assert graph["segkit.storage"] == {"segkit.errors"}
    assert "segkit.storage" in graph["segkit.data.io"] and "segkit.storage" in graph["segkit.submission"]


def test_data_io_re_exports_the_same_writers(tmp_path):
    for name in ("atomic_write", "atomic_dir", "atomic_save_npy", "sweep_stale", "temp_prefix", "storage_error"):
        assert getattr(io, name) is getattr(storage, name)
    target = tmp_path / "a.txt"
    with pytest.raises(RuntimeError):
        with storage.atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is a file, not a folder"):
        with storage.atomic_write(tmp_path / "file" / "b.txt") as fh:
            fh.write("y")


def test_config_adapter_uses_competition_root_and_options(tmp_path):
    cfg = load_config("carvana", [f"data.root={tmp_path}"])
    adapter = cfg.adapter()
    assert adapter.name == "carvana" and adapter.root == tmp_path
    folder = load_config("carvana", [f"data.root={tmp_path}", "data.competition=folder",
                                     "data.options={rle_order: X}"])
    with pytest.raises(ConfigError, match="data.options.rle_order: expected 'F' or 'C', got 'X'"):
        folder.adapter()  # the options reach the adapter's constructor
    bad = load_config("carvana", [f"data.root={tmp_path}", "data.options={rle_ordr: C}"])
    with pytest.raises(ConfigError, match="data.options.rle_ordr: unknown key"):
        bad.adapter()
