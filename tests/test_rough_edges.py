"""Rough edges a new user hit (issue 17): each test reproduces one."""
import pytest

from segkit.cli import main
from segkit.config import load_config, save_config


@pytest.mark.parametrize("command", ["predict", "tune", "report"])
def test_later_stages_use_the_runs_saved_data_root(tmp_path, monkeypatch, capsys, fixtures_dir, command):
    """`segkit <stage> tgs` after `segkit train tgs data.root=...`: the saved root, not data/tgs."""
    monkeypatch.chdir(tmp_path)
    trained = load_config("tgs", [f"data.root={fixtures_dir / 'tgs'}", "output.runs_dir=runs"])
    save_config(trained, tmp_path / "runs" / trained.name / "config.yaml")
    code = main([command, "tgs", "output.runs_dir=runs"])
    out = capsys.readouterr()
    assert code == 1  # nothing is trained: the error is about the folds, not the data
    assert "dataset folder not found" not in out.err and "data/tgs" not in out.err
    assert f"data.root: {fixtures_dir / 'tgs'} (as the run was trained" in out.out
    code = main([command, "tgs", "output.runs_dir=runs", "data.root=elsewhere"])  # an override still wins
    assert code == 1 and "as the run was trained" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["airbus", "carvana", "cloud38", "cloud95", "clouds", "folder", "severstal", "siim",
                                  "tgs"])
def test_every_competition_names_its_metric(name):
    """Severstal and SIIM printed the base scorer's docstring ("The competition's metric for one class ...")."""
    from segkit.data.competitions.base import Adapter, adapter_class

    metric = adapter_class(name).metric_name()
    assert metric and metric != Adapter.metric_name() and "competition's metric" not in metric
