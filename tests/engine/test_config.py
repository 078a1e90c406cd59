"""Config values are checked against the constraints declared with each field (shared sections and every method's
Config, plugins included); ``ssbench config`` prints exactly what a run records, and documents every field."""

import dataclasses
import sys
import textwrap

import pytest
import yaml

from conftest import TINY_RUN
from ssbench import registry
from ssbench.fields import apply_override, field_docs, from_dict, parse_value
from ssbench.engine.runconfig import DataConfig, RunConfig, TrainConfig
from ssbench.engine.plan import RunRequest, build_config
from ssbench.errors import ConfigError
from ssbench.metrics.evaluation import MetricPolicy


def _build(tiny, method="supervised", *sets, **kw):
    return build_config(RunRequest(method=method, dataset="nnunet", data_root=str(tiny), split="2", sets=sets, **kw))


@pytest.mark.parametrize("method,item,needles", [
    ("supervised", "train.lr=nan", ["--set train.lr=nan", "a finite number > 0"]),
    ("supervised", "train.lr=inf", ["train.lr=inf", "finite"]),
    ("supervised", "train.lr=-0.1", ["train.lr=-0.1", "> 0"]),
    ("supervised", "train.lr=.nan", ["train.lr=.nan", "finite"]),
    ("mean-teacher", "mean-teacher.ema_decay=nan", ["mean-teacher.ema_decay=nan", ">= 0 and <= 1"]),
    ("mean-teacher", "method.ema_decay=1.5", ["method.ema_decay=1.5", "<= 1"]),
    ("mean-teacher", "mean-teacher.rampup_step=0", ["rampup_step=0", "an integer >= 1"]),
    ("supervised", "train.momentum=-5", ["train.momentum=-5", ">= 0 and < 1"]),
    ("supervised", "eval.connectivity=7", ["eval.connectivity=7", "one of 1, 2, 3"]),
    ("supervised", "eval.empty=zero", ["eval.empty=zero", "one of worst, exclude, legacy-zero"]),
    ("mean-teacher", "train.batch_unlabeled=0", ["train.batch_unlabeled=0", "mean-teacher", "at least 1"]),
    ("supervised", "train.batch_unlabeled=-1", ["train.batch_unlabeled=-1", ">= 0"]),
    ("supervised", "train.iters=abc", ["train.iters=abc", "an integer >= 1"]),
    ("supervised", "train.iters=2.5", ["train.iters=2.5", "integer"]),
    ("supervised", "train.iters=true", ["train.iters=true", "integer"]),
    ("supervised", "train.val_every=often", ["train.val_every=often", "an integer >= 1 or epoch"]),
    ("supervised", "train.val_every=0", ["train.val_every=0", "or epoch"]),
    ("supervised", "train.seed=-1", ["train.seed=-1", ">= 0"]),
    ("supervised", "data.split_seed=-3", ["data.split_seed=-3", ">= 0"]),
    ("supervised", "data.train_size=40", ["data.train_size=40", "a multiple of 16"]),
    ("supervised", "train.optimizer=adam", ["train.optimizer=adam", "one of sgd, adamw"]),
    ("unimatch", "unimatch.fp_dropout=2", ["unimatch.fp_dropout=2", "<= 1"]),
    ("fixmatch", "fixmatch.strong_views=0", ["fixmatch.strong_views=0", ">= 1"]),  # re-declared field
    ("unimatch", "unimatch.conf_thresh=nan", ["conf_thresh=nan", "finite"]),
    ("sss", "sss.ema_decay=nan", ["sss.ema_decay=nan", "a finite number"]),  # plain annotations: finite still
    ("sss", "sss.pcsw_connectivity=7", ["sss.pcsw_connectivity=7", "one of 6, 26"]),
    ("supervised", "nnunet.window=[1]", ["nnunet.window=[1]", "a list of 2 numbers"]),
    ("supervised", "nnunet.val_fraction=nan", ["nnunet.val_fraction=nan", "finite"]),
    ("supervised", "train.bogus=1", ["train.bogus", "unknown key 'bogus'", "known: "]),
    ("supervised", "bogus.x=1", ["bogus.x", "unknown section 'bogus'"]),
    ("supervised", "train=3", ["--set train", "unknown section"]),
    ("supervised", "train.lr.x=1", ["train.lr.x", "no sub-keys"]),
    ("supervised", "train.lr", ["--set train.lr", "expected key=value"]),
    ("supervised", "=3", ["expected key=value"]),
    ("supervised", "data.root=/elsewhere", ["--set data.root", "set by --data-root"]),
    ("supervised", "data.dataset=bhsd", ["--set data.dataset", "set by --dataset"]),
    ("supervised", "data.synthetic=true", ["--set data.synthetic", "set by --data-root"]),
    ("supervised", "train.recipe=cpu-small", ["--set train.recipe", "set by --data-root"]),
])
def test_bad_values_are_refused_naming_key_value_and_what_is_allowed(tiny_nnunet, method, item, needles):
    with pytest.raises(ConfigError) as err:
        _build(tiny_nnunet, method, item)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("item,key,value", [
    ("train.lr=1e-4", "train.lr", 1e-4),  # YAML 1.1 reads 1e-4 as text: a number here
    ("train.iters=3e4", "train.iters", 30000),
    ("train.val_every=epoch", "train.val_every", "epoch"),
    ("train.val_every=50", "train.val_every", 50),
    ("train.deterministic=yes", "train.deterministic", True),
    ("nnunet.window=[0,80]", "nnunet.window", (0.0, 80.0)),
    ("nnunet.window=0, 80", "nnunet.window", (0.0, 80.0)),
    ("nnunet.window=(-10.5,90)", "nnunet.window", (-10.5, 90.0)),
    ("eval.connectivity=3", "eval.connectivity", 3),
    ("method.upsampling=transpose", "supervised.upsampling", "transpose"),
    ("data.split=3", "data.split", "3"),  # a text field takes the text as typed
])
def test_values_are_parsed_to_the_declared_types(tiny_nnunet, item, key, value):
    cfg, _, _ = _build(tiny_nnunet, "supervised", item)
    section, name = key.split(".")
    got = getattr(cfg.sections()[section], name)
    assert got == value and type(got) is type(value)


def test_sss_fields_with_plain_annotations_parse():
    sss = registry.method("sss")
    cfg = apply_override(sss.Config(), "checkpoint", "none")
    assert cfg.checkpoint is None
    cfg = apply_override(cfg, "checkpoint", "/weights/sam2.1_hiera_tiny.pt")
    assert cfg.checkpoint == "/weights/sam2.1_hiera_tiny.pt"
    assert apply_override(cfg, "pcsw_connectivity", "26").pcsw_connectivity == 26
    assert apply_override(cfg, "jitter", "[0.2,0.3]").jitter == (0.2, 0.3)
    assert apply_override(cfg, "dfe", "false").dfe is False


def test_config_files_are_checked_like_the_command_line():
    with pytest.raises(ConfigError, match=r"train.lr=nan: expected a finite number > 0"):
        from_dict(TrainConfig, {"lr": float("nan")}, "train")
    with pytest.raises(ConfigError, match=r"unknown config key train.bogus"):
        from_dict(TrainConfig, {"bogus": 1}, "train")
    with pytest.raises(ConfigError, match=r"data: expected a mapping"):
        from_dict(DataConfig, ["a"], "data")
    assert from_dict(MetricPolicy, {"connectivity": 2}, "eval").connectivity == 2
    assert parse_value("[0,80]") == [0, 80] and parse_value("none") == "none" and parse_value("1e-4") == 1e-4


def test_a_bad_value_from_code_is_caught_too(tiny_nnunet, monkeypatch):
    """A method's recipe override that puts a value out of range is refused like a --set; so is a section that
    code replaced after parsing."""
    from ssbench.methods.mean_teacher import MeanTeacher

    with monkeypatch.context() as m:
        m.setattr(MeanTeacher, "recipe_overrides", classmethod(lambda cls, recipe: {"momentum": 2.0}))
        with pytest.raises(ConfigError, match="train.momentum=2.0: expected a finite number >= 0 and < 1"):
            _build(tiny_nnunet, "mean-teacher")
    cfg, _, _ = _build(tiny_nnunet, "mean-teacher")
    with pytest.raises(ConfigError, match="mean-teacher.rampup_step=0"):
        dataclasses.replace(cfg, method_config=dataclasses.replace(cfg.method_config, rampup_step=0)).check()


PLUGIN = textwrap.dedent('''
    """A plugin method with a string-annotated frozen Config: no pydantic, comments as help."""
    from __future__ import annotations

    from dataclasses import dataclass
    from typing import Literal

    from ssbench.methods.supervised import Supervised


    @dataclass(frozen=True)
    class EntConfig:
        weight: float = 0.1  # entropy weight
        # warm-up iterations before the entropy term
        warmup: int = 100
        mode: Literal["mean", "sum"] = "mean"
        tags: tuple[str, ...] = ()


    class Ent(Supervised):
        """Ent: entropy minimisation for the tests."""

        name = "ent"
        Config = EntConfig
''')


@pytest.fixture
def ent_plugin(tmp_path):
    (tmp_path / "ent_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "ent_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ent-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ssbench.methods]\nent = ent_plugin:Ent\n")
    sys.path.insert(0, str(tmp_path))
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("ent_plugin", None)


def test_plugin_configs_with_string_annotations_work(ent_plugin, tiny_nnunet, cli):
    cfg, _, _ = _build(tiny_nnunet, "ent", "ent.weight=0.5", "ent.mode=sum", "method.warmup=7", "ent.tags=[a,b]")
    assert (cfg.method_config.weight, cfg.method_config.mode, cfg.method_config.warmup) == (0.5, "sum", 7)
    assert cfg.method_config.tags == ("a", "b")
    for item, needle in [("ent.weight=nan", "ent.weight=nan: expected a finite number"),
                         ("ent.mode=max", "ent.mode=max: expected one of mean, sum"),
                         ("ent.warmup=soon", "ent.warmup=soon: expected an integer"),
                         ("ent.bogus=1", "unknown key 'bogus'")]:
        with pytest.raises(ConfigError, match=needle):
            _build(tiny_nnunet, "ent", item)
    code, out, err = cli("config", "--method", "ent", "--dataset", "nnunet", "--data-root", tiny_nnunet,
                         "--help-fields")
    assert code == 0, err
    assert "ent.weight: 0.1  (a finite number)" in out and "entropy weight" in out
    assert "warm-up iterations before the entropy term" in out  # the comment above the field
    assert "ent.mode: mean  (one of mean, sum)" in out


def test_every_builtin_field_has_help():
    sections = [DataConfig, TrainConfig, MetricPolicy]
    sections += [registry.method(n).Config for n in ("supervised", "mean-teacher", "unimatch", "fixmatch")]
    sections += [registry.dataset(n).Options for n in ("acdc", "bhsd", "nnunet")]
    missing = [f"{cls.__name__}.{d.name}" for cls in sections for d in field_docs(cls) if not d.help]
    assert missing == []


def test_config_command_prints_what_the_run_records(tiny_nnunet, tmp_path, cli):
    args = ["--method", "unimatch", "--dataset", "nnunet", "--data-root", tiny_nnunet, "--split", "2",
            "--set", "data.train_size=32", "--set", "train.batch_labeled=2", "--set", "train.batch_unlabeled=2",
            "--set", "train.epochs=1", "--set", "unimatch.cutmix_p=0.25", "--seed", "5"]
    code, printed, err = cli("config", *args)
    assert code == 0, err
    shown = yaml.safe_load(printed)
    # published recipe on real data: an epoch schedule whose length comes from the data (5 unlabeled cases x 4
    # slices // batch 2 = 10 iterations per epoch)
    assert shown["train"]["schedule"] == "epochs" and shown["train"]["iters"] == 10
    assert shown["eval"]["hd_units"] == "mm" and shown["unimatch"]["cutmix_p"] == 0.25
    code, _, err = cli("run", *args, "--out", tmp_path, "--device", "cpu", "--quiet")
    assert code == 0, err
    run = tmp_path / "nnunet" / "unimatch@cutmix_p=0.25" / "2" / "seed5"
    assert (run / "config.yaml").read_text() == printed
    assert shown["config_hash"] == yaml.safe_load((run / "config.yaml").read_text())["config_hash"]


def test_help_fields_lists_every_set_key_with_default_and_help(tiny_nnunet, cli):
    code, out, err = cli("config", "--method", "mean-teacher", "--dataset", "nnunet", "--data-root", tiny_nnunet,
                         "--help-fields")
    assert code == 0, err
    cfg, _, _ = _build(tiny_nnunet, "mean-teacher")
    for section, obj in cfg.sections().items():
        assert f"[{section}]" in out
        for f in dataclasses.fields(obj):
            assert f"  {section}.{f.name}: " in out
    assert "  train.lr: 0.01  (a finite number > 0 and < 3.4e+38)\n      initial learning rate" in out
    assert "mean-teacher.ema_decay: 0.99  (a finite number >= 0 and <= 1)" in out
    assert "data.root: " in out and "; default none" in out
    code, out, err = cli("config", "--method", "sss", "--dataset", "nnunet", "--data-root", tiny_nnunet,
                         "--help-fields")
    assert code == 0 and "sss.pcsw_connectivity: 6  (one of 6, 26)" in out, err


def test_resolved_config_round_trips(tiny_nnunet):
    for method in ("supervised", "mean-teacher", "unimatch", "fixmatch", "sss"):
        cfg, method_cls, dataset = _build(tiny_nnunet, method)
        again = RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())), method_cls, type(dataset))
        assert again.hash() == cfg.hash()


def test_tiny_run_options_are_valid(tiny_nnunet, cli):
    code, out, err = cli("config", "--method", "supervised", "--data-root", tiny_nnunet,
                         *[a for a in TINY_RUN if a not in ("--device", "cpu", "--quiet")])
    assert code == 0, err


def test_word_choices_stay_words_on_the_command_line(cli, tiny_nnunet):
    """'on' / 'off' are YAML booleans; a field whose choices are words takes them as the words (--no-amp is
    train.amp=off)."""
    code, printed, err = cli("config", "--method", "supervised", "--dataset", "nnunet", "--data-root", tiny_nnunet,
                             "--split", "2", "--no-amp", "--set", "train.sync_bn=on", "--set", "train.compile=off",
                             "--set", "train.val_every=50")
    assert code == 0, err
    shown = yaml.safe_load(printed)["train"]
    assert (shown["amp"], shown["sync_bn"], shown["compile"], shown["val_every"]) == ("off", "on", "off", 50)
