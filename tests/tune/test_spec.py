"""Grid specs: shipped YAML validates, cells expand, bad specs fail in one line naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidct_bench.errors import BenchError
from covidct_bench.tune.spec import config_hash, load_spec, train_config

ABLATIONS = Path(__file__).resolve().parents[2] / "ablations"


@pytest.mark.parametrize("path", sorted(ABLATIONS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate(path):
    spec = load_spec(path)
    assert spec.name == path.stem and spec.cells()


def test_cells_cross_the_axes_and_axes_win_over_fixed_and_presets():
    spec = load_spec(ABLATIONS / "smoke.yaml")
    cells = spec.cells()
    assert len(cells) == 4 and cells[0] == {"backbone": "resnet18", "masks": "none"}
    s = spec.cell_settings({"backbone": "resnet18", "masks": "lung"}, "cpu")
    assert (s["image_size"], s["epochs"], s["mask_mode"], s["init"]) == (64, 3, "channel", "random")
    cfg = train_config(s, 3)
    assert cfg.seed == 3 and cfg.in_chans == 4
    assert config_hash(s, 0) != config_hash(s, 1) != config_hash({**s, "lr": 1e-3}, 1)
    assert config_hash(s, 0) == config_hash(dict(reversed(list(s.items()))), 0)


@pytest.mark.parametrize("text, message", [
    ("name: x\naxes:\n  colour: [red]\n", r"x.yaml: axes: unknown axis 'colour'"),
    ("name: x\naxes:\n  masks: [lungs]\n", r"x.yaml: axes: masks must be one of none, lung, lesion, both"),
    ("name: x\naxes:\n  positive_data: [covid-ct-abc]\n", r"positive_data must be covid-ct, covid-seg"),
    ("name: x\nseeds: []\n", r"x.yaml: seeds: List should have at least 1 item"),
    ("name: x\nresources: {gpus: -1}\n", r"x.yaml: resources.gpus: Input should be greater than or equal to 0"),
    ("name: x\nsearch: {trials: 2, space: {lr: {type: loguniform, low: 1, high: 0.1}}}\n",
     r"x.yaml: search.space.lr: loguniform needs low < high"),
    ("name: x\nsearch: {space: {learning_rate: {type: uniform, low: 0, high: 1}}}\n",
     r"x.yaml: search.space: 'learning_rate' is not a TrainConfig setting"),
    ("name: x\nfixed: {epochs: 0}\n", r"x.yaml: fixed.epochs: Input should be greater than or equal to 1"),
    ("name: x\npresets: {cpu: {batch_size: 1}}\n", r"x.yaml: presets.cpu.batch_size"),
    ("name: x\ntaks: classify\n", r"x.yaml: taks: Extra inputs are not permitted"),
    ("[1, 2]\n", r"x.yaml: a grid spec is a mapping"),
])
def test_bad_specs_name_file_and_key_path(tmp_path, text, message):
    f = tmp_path / "x.yaml"
    f.write_text(text)
    with pytest.raises(BenchError, match=message):
        load_spec(f)


def test_unknown_preset_is_named():
    with pytest.raises(BenchError, match="--preset: smoke has no preset 'paper'"):
        load_spec(ABLATIONS / "smoke.yaml", preset="paper")
