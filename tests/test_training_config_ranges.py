"""The one validation layer of the training configs: a Range for every numeric field, checked before any work.

Every value out of range (counts of 0, negative steps, NaN or inf learning rates, a vocabulary of 0) used to
crash mid-run (ZeroDivisionError, IndexError) or "train" 0 steps and exit 0; now it is a one-line error naming
the key, the value and the accepted range, before data loading or model building.
"""

import dataclasses
import json
import types
import typing

import numpy as np
import pytest
from PIL import Image

from nextscale.baseline.raster_ar import RasterARConfig
from nextscale.config_schema import ConfigError, Range, check_ranges, ranges_of
from nextscale.tokenizer.vqvae import VQVAEConfig
from nextscale.training.config import load_config
from nextscale.training.tokenizer_trainer import TokenizerTrainConfig, train_tokenizer
from nextscale.training.var_trainer import TrainConfig
from nextscale.transformer.var import VARConfig
from refusals import refused


# ---------------------------------------------------------------------------- the table is complete
def _numeric(hint) -> bool:
    """Whether a field's type holds numbers: int, float, X | None, tuple[int, ...] and the like (not bool)."""
    if hint in (int, float):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType, tuple, list):
        return any(_numeric(a) for a in args if a is not type(None) and a is not Ellipsis)
    return False


def _config_classes(cls, seen=None):
    """`cls` and every config dataclass nested in it."""
    seen = {} if seen is None else seen
    seen[cls] = None
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint) and hint not in seen:
            _config_classes(hint, seen)
    return list(seen)


@pytest.mark.parametrize("root", [TrainConfig, TokenizerTrainConfig, VARConfig, VQVAEConfig, RasterARConfig])
def test_every_numeric_config_field_has_a_range(root):
    """A numeric field added without a Range fails here (add it to its class's RANGES table)."""
    classes = _config_classes(root)
    if root in (TrainConfig, TokenizerTrainConfig):
        assert {c.__name__ for c in classes} >= {"DataConfig", "OptimConfig"}
    missing, unknown = [], []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        table = ranges_of(cls)
        missing += [f"{cls.__name__}.{name}" for name in fields if _numeric(hints[name]) and name not in table]
        unknown += [f"{cls.__name__}.{name}" for name in table if name not in fields]
        assert all(isinstance(r, Range) for r in table.values())
    assert not missing, f"numeric config fields without a range: {missing}"
    assert not unknown, f"ranges of fields that do not exist: {unknown}"


@pytest.mark.parametrize("root", [TrainConfig, TokenizerTrainConfig])
def test_the_defaults_and_the_shipped_recipes_are_in_range(root):
    from pathlib import Path
    check_ranges(root())
    configs = Path(__file__).parents[1] / "configs"
    for path in sorted(configs.glob("tokenizer_*.yaml" if root is TokenizerTrainConfig else "var_*.yaml")):
        check_ranges(load_config(root, path))


# ---------------------------------------------------------------------------- the messages
def test_range_messages_name_key_value_and_range():
    assert Range(low=1).problems("steps", -5) == ["steps must be at least 1, got -5"]
    assert Range(low=0, zero="off").problems("eval_every", -1) == ["eval_every must be 0 (off) or more, got -1"]
    assert Range(low=0, low_open=True).problems("optim.lr", 0.0) == ["optim.lr must be greater than 0, got 0.0"]
    assert Range(low=0, high=1, high_open=True).problems("x", 1.0) == ["x must be in [0, 1), got 1.0"]
    assert Range(choices=(1, 3)).problems("data.channels", 2) == ["data.channels must be one of 1, 3, got 2"]
    assert Range(low=0).problems("w", float("nan")) == ["w must be at least 0 (a finite number), got nan"]
    assert Range().problems("w", float("-inf")) == ["w must be a finite number, got -inf"]
    assert Range(low=0, high=1, items=2).problems("optim.betas", (0.9, 1.5)) == [
        "optim.betas[1] must be in [0, 1], got 1.5"]
    assert Range(low=0, high=1, items=2).problems("optim.betas", (0.9,)) == ["optim.betas must hold 2 values, got [0.9]"]
    assert Range(low=1).problems("micro_batch", None) == []  # None: the field's "unset"


def test_all_bad_keys_are_named_in_one_line():
    cfg = load_config(TokenizerTrainConfig, None, ["model.vocab_size=0", "optim.weight_decay=-1", "log_every=0"])
    with pytest.raises(ConfigError) as e:
        check_ranges(cfg)
    message = str(e.value)
    assert "\n" not in message
    for part in ("model.vocab_size must be at least 1, got 0", "optim.weight_decay must be at least 0, got -1.0",
                 "log_every must be at least 1, got 0"):
        assert part in message


# ---------------------------------------------------------------------------- both commands, before any work
@pytest.mark.parametrize("argv, message", [
    (["train", "log_every=0"], "log_every must be at least 1, got 0"),
    (["train", "global_batch=0"], "global_batch must be at least 1, got 0"),
    (["train", "steps=0"], "steps must be at least 1, got 0"),
    (["train", "steps=-1"], "steps must be at least 1, got -1"),
    (["train", "epochs=0"], "epochs must be greater than 0, got 0.0"),
    (["train", "optim.weight_decay=-1"], "optim.weight_decay must be at least 0, got -1.0"),
    (["train", "optim.lr=.nan"], "optim.lr must be greater than 0 (a finite number), got nan"),
    (["train", "optim.base_lr=inf"], "optim.base_lr must be greater than 0 (a finite number), got inf"),
    (["train", "optim.betas=0.9,1.0"], "optim.betas[1] must be in [0, 1), got 1.0"),
    (["train", "model.depth=0"], "model.depth must be at least 1, got 0"),
    (["train", "model.class_drop_prob=-0.1"], "model.class_drop_prob must be in [0, 1], got -0.1"),
    (["train", "sample.top_p=1.5"], "sample.top_p must be in [0, 1], got 1.5"),
    (["train", "data.resolution=0"], "data.resolution must be at least 1, got 0"),
    (["train", "seed=-1"], "seed must be in [0, 4294967295], got -1"),
    (["train-tokenizer", "log_every=0"], "log_every must be at least 1, got 0"),
    (["train-tokenizer", "checkpoint_every=-1"], "checkpoint_every must be 0 (only at the end) or more, got -1"),
    (["train-tokenizer", "model.vocab_size=0"], "model.vocab_size must be at least 1, got 0"),
    (["train-tokenizer", "steps=-5"], "steps must be at least 1, got -5"),
    (["train-tokenizer", "optim.weight_decay=-1"], "optim.weight_decay must be at least 0, got -1.0"),
    (["train-tokenizer", "optim.lr=nan"], "optim.lr must be greater than 0 (a finite number), got nan"),
    (["train-tokenizer", "loss.gan_weight=-0.1"], "loss.gan_weight must be 0 (off) or more, got -0.1"),
    (["train-tokenizer", "data.channels=2"], "data.channels must be one of 1, 3, got 2"),
    (["train-tokenizer", "codebook.usage_threshold=.inf"], "codebook.usage_threshold must be at least 0 (a finite "
                                                            "number), got inf"),
    (["train-tokenizer", "time_limit_minutes=-1"], "time_limit_minutes must be 0 (no limit) or more, got -1.0"),
])
def test_values_out_of_range_are_one_line_errors_before_any_work(argv, message, tmp_path, capsys):
    """A data folder that does not exist and (train) no tokenizer: the range error comes first, nothing is written."""
    refused([*argv, f"out_dir={tmp_path / 'run'}", f"data.path={tmp_path / 'no_images'}"], capsys, message,
            alone=True)
    assert not (tmp_path / "run").exists()


def test_python_api_checks_ranges_too(tmp_path):
    """train_tokenizer(cfg) with a config built in Python (no load_config) is checked as well."""
    cfg = TokenizerTrainConfig(out_dir=str(tmp_path / "run"), log_every=0)
    with pytest.raises(ConfigError, match="log_every must be at least 1, got 0"):
        train_tokenizer(cfg)
    from nextscale.training.var_trainer import train
    with pytest.raises(ConfigError, match="optim.weight_decay must be at least 0, got -1.0"):
        train({"out_dir": str(tmp_path / "var"), "optim": {"weight_decay": -1}})
    assert not (tmp_path / "run").exists() and not (tmp_path / "var").exists()


# ---------------------------------------------------------------------------- 0 where 0 means "off" works
def _images(folder, n=8, size=8):
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return folder


def test_tokenizer_checkpoint_every_0_and_eval_every_0_train_and_checkpoint_at_the_end(tmp_path):
    data = _images(tmp_path / "images")
    cfg = load_config(TokenizerTrainConfig, None, [
        f"out_dir={tmp_path / 'run'}", "steps=3", "global_batch=4", "threads=1", "data.kind=image_folder",
        f"data.path={data}", "data.resolution=8", "model.ch=32", "model.ch_mult=1,2", "model.num_res_blocks=1",
        "model.z_channels=8", "model.vocab_size=16", "model.patch_nums=1,2,4", "log_every=2", "checkpoint_every=0",
        "eval_every=0", "codebook.restart_every=0", "optim.warmup_steps=0", "time_limit_minutes=0"])
    summary = train_tokenizer(cfg)
    assert summary["step"] == 3 and "eval_psnr" not in summary
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")) == ["step_00000003.pt"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]  # every log_every steps, and the last step
