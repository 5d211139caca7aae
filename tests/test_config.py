import pytest

from hwnas.cli import main
from hwnas.config import load_config, parse_overrides, read_yaml, resolve_path
from hwnas.methods import SearchConfig
from hwnas.errors import ConfigError


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_published_recipe_loads():
    config = load_config(SearchConfig, "configs/search/darts_cifar10.yaml")
    assert config.method.name == "darts" and config.method.unrolled is False
    assert config.search.batch_size == 64 and config.search.weight_optimizer.lr == 0.025
    assert config.search.arch_optimizer.betas == [0.5, 0.999]
    assert config.method.supernet.layers == 8 and config.data.train_portion == 0.5


@pytest.mark.parametrize("text, message", [
    ("method: darts\nsearch: {epochs: 3, batchsize: 8}\n", "search.batchsize: unknown key"),
    ("method: darts\nsearch: {epochs: three}\n", "search.epochs: Input should be a valid integer"),
    ("method: darts\nsearch: {epochs: -1}\n", "search.epochs: Input should be greater than 0"),
    ("method: darts\ndata: {train_portion: 1.5}\n", "data.train_portion"),
    ("method: darts\ndata: {dataset: mnist}\n", "data.dataset"),
    ("method: {name: darts, unroled: true}\n", "method.unroled: unknown key"),
    ("method: {name: enas}\n", "unknown method 'enas'"),
    ("method: darts\ndevice: gpu0\n", "not a torch device"),
    ("method: darts\nsearch: {epochs: 5, arch_start_epoch: 5}\n", "never moves"),
    ("- just\n- a list\n", "expected a mapping"),
    ("method: [unclosed\n", "not valid YAML"),
])
def test_bad_configs_name_the_key_and_file(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(SearchConfig, path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_overrides():
    config = load_config(SearchConfig, "configs/search/darts_digits.yaml",
                         ["search.epochs=3", "data.augment.flip=true", "search.arch_optimizer.betas=[0.9, 0.99]"])
    assert config.search.epochs == 3 and config.data.augment.flip is True
    assert config.search.arch_optimizer.betas == [0.9, 0.99]
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SearchConfig, "configs/search/darts_digits.yaml", ["search.epoch=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["epochs"])


def test_missing_config_file_cli(capsys, tmp_path):
    assert main(["search", "darts", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_config_for_another_method(capsys, tmp_path):
    path = _write(tmp_path, "method: gdas\n")
    assert main(["search", "darts", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "is a `gdas` config, not `darts`" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_cell_supernet_is_an_option_of_the_cell_methods_only(capsys, tmp_path):
    """The cell supernet's settings are the cell methods' options; DenseNAS builds its supernet from its
    routing space, so `method.supernet` is an unknown key there, and the old top-level block is refused
    with where it went."""
    assert load_config(SearchConfig, "configs/search/darts_digits.yaml",
                       ["method.supernet.layers=20"]).method.supernet.layers == 20
    with pytest.raises(ConfigError, match="method.supernet: unknown key"):
        load_config(SearchConfig, "configs/search/densenas_digits.yaml", ["method.supernet.layers=20"])
    with pytest.raises(ConfigError) as info:
        load_config(SearchConfig, "configs/search/darts_digits.yaml", ["supernet.layers=20"])
    assert "move the `supernet:` block under `method:`" in str(info.value) and "\n" not in str(info.value)
    # the shipped DenseNAS recipes set none of it
    for recipe in sorted(resolve_path("configs/search").glob("*densenas*.yaml")):
        assert "supernet" not in read_yaml(recipe)["method"] and load_config(SearchConfig, recipe).method.name == "densenas"
    # the CLI: one line, exit 2, no run directory
    assert main(["search", "densenas", "--set", "method.supernet.layers=20", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "method.supernet: unknown key" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("recipe", ["darts_cifar10", "pdarts_digits", "gdas_digits", "pcdarts_digits",
                                    "densenas_digits"])
def test_resolved_config_round_trips_with_method_options(recipe):
    """The run directory's config.yaml is what --resume rebuilds from: method options must survive."""
    from hwnas.config import build_config, config_to_dict

    config = load_config(SearchConfig, f"configs/search/{recipe}.yaml", ["method.name=" + recipe.split("_")[0]])
    dumped = config_to_dict(config)
    assert set(dumped["method"]) == set(type(config.method).model_fields)
    assert build_config(SearchConfig, dumped, "round trip") == config


def test_the_run_exports_the_formats_it_names_and_no_unknown_one():
    from hwnas.pipeline import load_run_config

    assert load_run_config(None, []).export.formats == ["ort"]
    assert load_run_config(None, ["export.formats=[pte,ort]"]).export.formats == ["pte", "ort"]
    with pytest.raises(ConfigError, match="export.formats: unknown xyz; hwnas exports onnx, pte, tflite, ort"):
        load_run_config(None, ["export.formats=[xyz]"])
    with pytest.raises(ConfigError, match=r"`ort` is now one of the formats: `formats: \[ort\]`"):
        load_run_config(None, ["export.ort=true"])
