"""Behaviour of the values modules names, hparams, redaction and urls: MLflow names, hyperparameter flattening
and rendering, secrets."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import math
import os
import subprocess
import sys
import textwrap
from argparse import Namespace
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lightning_mlflow_ext.values.hparams import flatten_hparams, render_hparams, render_value
from lightning_mlflow_ext.values.names import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_PARAM_VAL_LENGTH,
    NameMapper,
    is_valid_name,
    truncate_value,
)
from lightning_mlflow_ext.values.redaction import REDACTED, is_secret_key, redact_secrets
from lightning_mlflow_ext.values.urls import strip_url_credentials

VALUES_DIR = Path(__file__).resolve().parents[1] / "src" / "lightning_mlflow_ext" / "values"
VALUES_MODULES = ("names", "hparams", "redaction", "urls", "config_file")


def sha8(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# ---- module ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "docstring"),
    [
        (
            "names",
            '"""MLflow names: which metric/param/tag keys MLflow accepts, and NameMapper, which maps every user key '
            'to a\nvalid name no other key has; MLflow\'s length limits and truncate_value for values."""\n',
        ),
        (
            "hparams",
            '"""Hyperparameters as MLflow params: flattening nested containers (OmegaConf configs included) into\n'
            '``a/b`` keys, and rendering values as text that is the same in every process, secrets redacted."""\n',
        ),
        (
            "redaction",
            '"""Secrets in hyperparameters and tags: Redactor (the built-in secret words plus the user\'s '
            '``redact=``\npatterns), is_secret_key and redact_secrets, whose values are recorded as REDACTED."""\n',
        ),
        ("urls", '"""Credentials out of URLs, before any text reaches a run.\n'),
    ],
)
def test_module_docstring_states_the_modules_job_in_two_lines(module: str, docstring: str) -> None:
    source = (VALUES_DIR / f"{module}.py").read_text(encoding="utf-8")
    assert source.startswith(docstring)


def run_alone(module: str, code: str, hash_seed: str = "0") -> str:
    """Run ``code`` in a fresh interpreter where the name ``module`` is values/<module>.py loaded on its own;
    return its stdout.

    On its own because the package __init__ imports the logger, which imports lightning anyway.
    """
    loader = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("{module}_alone", {str(VALUES_DIR / f"{module}.py")!r})
        {module} = importlib.util.module_from_spec(spec)
        spec.loader.exec_module({module})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", loader + code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )
    return result.stdout.strip()


@pytest.mark.parametrize("module", VALUES_MODULES)
def test_importing_a_values_module_does_not_import_torch_omegaconf_or_lightning(module: str) -> None:
    heavy = ("torch", "omegaconf", "lightning", "pytorch_lightning")
    assert run_alone(module, f"print(sorted(m for m in {heavy!r} if m in sys.modules))") == "[]"


def test_limits_are_mlflows() -> None:
    assert (MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH) == (250, 6000)


# ---- is_valid_name --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["loss", "val/loss", "val loss", "a.b-c_d:e", "größe/λ", "a/...", "a..b", "x" * 250, "a/.b", "0"],
)
def test_valid_names_are_accepted(name: str) -> None:
    assert is_valid_name(name) is True


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 251,
        "a//b",
        "/a",
        "a/",
        "a/./b",
        "a/../b",
        "./a",
        "a/.",
        ".",
        "..",
        "..a",
        "val@loss",
        "a\n",
        "a\tb",
        "loss[0]",
    ],
)
def test_invalid_names_are_rejected(name: str) -> None:
    assert is_valid_name(name) is False


# ---- NameMapper: sanitizing -----------------------------------------------------------------------------


def test_valid_key_maps_to_itself_and_is_not_reported_as_renamed() -> None:
    mapper = NameMapper()
    assert mapper.map("val/loss") == "val/loss"
    assert mapper.renamed == {}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("val loss@top-1", "val loss_top-1"),
        ("a//b", "a/b"),
        ("a///b", "a/b"),
        ("/a/", "a"),
        ("a/../b", "a/__/b"),
        ("a/./b", "a/_/b"),
        ("./a", "_/a"),
        ("a/.", "a/_"),
        ("..a", "__a"),
        ("loss[0]", "loss_0_"),
        ("größe@λ", "größe_λ"),
        ("", "_"),
        ("@", "_"),
        ("//", "_"),
        ("a\nb", "a_b"),
    ],
)
def test_invalid_key_is_sanitized_to_a_valid_name(key: str, expected: str) -> None:
    mapper = NameMapper()
    assert mapper.map(key) == expected
    assert is_valid_name(expected)
    assert mapper.renamed == {key: expected}


def test_unicode_letters_stay_unchanged() -> None:
    assert NameMapper().map("métrique/准确率") == "métrique/准确率"


def test_key_longer_than_250_chars_is_cut_and_suffixed_with_its_hash() -> None:
    key = "x" * 300
    name = NameMapper().map(key)
    assert name == "x" * 241 + "-" + sha8(key)
    assert len(name) == 250
    assert is_valid_name(name)


def test_two_long_keys_with_the_same_start_get_different_names() -> None:
    mapper = NameMapper()
    first, second = "x" * 300 + "a", "x" * 300 + "b"
    assert mapper.map(first) != mapper.map(second)
    assert mapper.map(second) == "x" * 241 + "-" + sha8(second)


def test_long_invalid_key_is_sanitized_then_cut() -> None:
    key = "a@" * 200
    assert NameMapper().map(key) == ("a_" * 200)[:241] + "-" + sha8(key)


def test_cut_that_lands_on_a_slash_still_gives_a_valid_name() -> None:
    key = "x" * 240 + "/" + "y" * 50
    name = NameMapper().map(key)
    assert name == "x" * 240 + "/-" + sha8(key)
    assert is_valid_name(name)


# ---- NameMapper: collisions -----------------------------------------------------------------------------


def test_two_different_keys_never_map_to_one_name() -> None:
    mapper = NameMapper()
    keys = ["a@b", "a#b", "a_b", "a b", "a/b", "a//b", "/a/b", "a/b/", "", "_", "@", "x" * 300, "x" * 301]
    names = [mapper.map(key) for key in keys]
    assert len(set(names)) == len(keys)
    assert all(is_valid_name(name) for name in names)


def test_invalid_key_colliding_with_an_earlier_valid_key_gets_a_hash_suffix() -> None:
    mapper = NameMapper()
    assert mapper.map("a_b") == "a_b"
    assert mapper.map("a@b") == "a_b-" + sha8("a@b")
    assert mapper.renamed == {"a@b": "a_b-" + sha8("a@b")}


def test_valid_key_arriving_after_an_invalid_key_took_its_name_gets_a_hash_suffix() -> None:
    mapper = NameMapper()
    assert mapper.map("a@b") == "a_b"
    assert mapper.map("a_b") == "a_b-" + sha8("a_b")
    assert mapper.renamed == {"a@b": "a_b", "a_b": "a_b-" + sha8("a_b")}


def test_two_invalid_keys_sanitizing_to_one_text_are_kept_apart() -> None:
    mapper = NameMapper()
    assert mapper.map("a@b") == "a_b"
    assert mapper.map("a#b") == "a_b-" + sha8("a#b")


def test_collapsed_slashes_colliding_with_a_valid_key_are_kept_apart() -> None:
    mapper = NameMapper()
    assert mapper.map("a/b") == "a/b"
    assert mapper.map("a//b") == "a/b-" + sha8("a//b")


def test_a_key_maps_to_the_same_name_on_every_call() -> None:
    mapper = NameMapper()
    first = [mapper.map(key) for key in ("a@b", "a_b", "ok", "x" * 300)]
    again = [mapper.map(key) for key in ("x" * 300, "ok", "a_b", "a@b")]
    assert again == first[::-1]


def test_mapping_is_deterministic_across_instances_and_processes() -> None:
    keys = ["a@b", "a_b", "x" * 300, "/lr/", "val loss@top-1"]
    expected = ["a_b", "a_b-" + sha8("a_b"), "x" * 241 + "-" + sha8("x" * 300), "lr", "val loss_top-1"]
    first, second = NameMapper(), NameMapper()
    assert [first.map(key) for key in keys] == expected
    assert [second.map(key) for key in keys] == expected
    # Other interpreters have other hash() salts; the names must not depend on them.
    code = f"m = names.NameMapper()\nprint(repr([m.map(k) for k in {keys!r}]))"
    for seed in ("1", "2"):
        assert run_alone("names", code, hash_seed=seed) == repr(expected)


def test_concurrent_callers_never_share_a_name() -> None:
    mapper = NameMapper()
    keys = [f"k{i % 50}{sep}" for i in range(400) for sep in ("@", "#", "_")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        names = list(pool.map(mapper.map, keys))
    by_key = dict(zip(keys, names, strict=True))
    assert len(set(by_key.values())) == len(by_key) == 150
    assert all(mapper.map(key) == name for key, name in zip(keys, names, strict=True))


def test_renamed_is_a_snapshot_the_caller_cannot_corrupt() -> None:
    mapper = NameMapper()
    mapper.map("a@b")
    snapshot = mapper.renamed
    snapshot.clear()
    assert mapper.renamed == {"a@b": "a_b"}


# ---- flatten_hparams ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass
class Config:
    optim: Optim = dataclasses.field(default_factory=Optim)
    name: str = "run"


def test_nested_dicts_are_joined_with_slashes() -> None:
    assert flatten_hparams({"optimizer": {"lr": 1e-3, "sched": {"gamma": 0.5}}, "bs": 32}) == {
        "optimizer/lr": 0.001,
        "optimizer/sched/gamma": 0.5,
        "bs": 32,
    }


def test_custom_separator_joins_keys() -> None:
    assert flatten_hparams({"a": {"b": 1}}, separator=".") == {"a.b": 1}


def test_lists_and_tuples_are_values_not_flattened() -> None:
    assert flatten_hparams({"layers": [64, {"x": 1}], "shape": (3, 4)}) == {
        "layers": [64, {"x": 1}],
        "shape": (3, 4),
    }


def test_empty_nested_dict_produces_no_keys() -> None:
    assert flatten_hparams({"a": {}, "b": {"c": {}}, "d": 1}) == {"d": 1}


def test_keys_are_converted_with_str() -> None:
    assert flatten_hparams({1: {2.5: "x"}, None: True}) == {"1/2.5": "x", "None": True}


def test_namespace_is_flattened_at_top_level_and_nested() -> None:
    params = Namespace(lr=0.1, model=Namespace(depth=3), extra={"k": "v"})
    assert flatten_hparams(params) == {"lr": 0.1, "model/depth": 3, "extra/k": "v"}


def test_dataclass_instances_are_flattened_and_tuples_inside_kept() -> None:
    assert flatten_hparams(Config()) == {"optim/lr": 0.001, "optim/betas": (0.9, 0.999), "name": "run"}
    assert flatten_hparams({"cfg": Optim(lr=0.5)}) == {"cfg/lr": 0.5, "cfg/betas": (0.9, 0.999)}


def test_dataclass_type_is_rejected_at_top_level_and_kept_as_value_inside() -> None:
    with pytest.raises(TypeError):
        flatten_hparams(Optim)
    assert flatten_hparams({"cls": Optim}) == {"cls": Optim}


def test_lightning_attribute_dict_is_flattened() -> None:
    from lightning.fabric.utilities.data import AttributeDict

    assert flatten_hparams(AttributeDict(a=1, b=AttributeDict(c=2))) == {"a": 1, "b/c": 2}


def test_dictconfig_is_flattened_with_interpolations_resolved() -> None:
    cfg = OmegaConf.create({"model": {"dim": 8, "hidden": "${model.dim}"}, "sizes": [1, "${model.dim}"]})
    flat = flatten_hparams(cfg)
    assert flat == {"model/dim": 8, "model/hidden": 8, "sizes": [1, 8]}
    assert type(flat["sizes"]) is list


def test_dictconfig_nested_inside_a_dict_is_flattened() -> None:
    cfg = OmegaConf.create({"a": {"b": "${c}"}, "c": 2})
    assert flatten_hparams({"cfg": cfg, "seed": 1}) == {"cfg/a/b": 2, "cfg/c": 2, "seed": 1}


def test_listconfig_value_becomes_a_plain_list() -> None:
    value = flatten_hparams({"l": OmegaConf.create([1, {"a": 2}])})["l"]
    assert value == [1, {"a": 2}]
    assert type(value) is list
    assert type(value[1]) is dict


def test_broken_interpolation_falls_back_to_the_unresolved_text() -> None:
    cfg = OmegaConf.create(
        {
            "ok": "${dim}",
            "dim": 4,
            "missing": "${does.not.exist}",
            "env": "${oc.env:LIGHTNING_MLFLOW_EXT_SURELY_UNSET_VAR}",
            "mandatory": "???",
            "nested": {"bad": "${nope}", "good": "${dim}"},
            "items": ["${nope}", 1],
        }
    )
    # The keys that do resolve keep their resolved values; only the broken ones stay as written.
    assert flatten_hparams(cfg) == {
        "ok": 4,
        "dim": 4,
        "missing": "${does.not.exist}",
        "env": "${oc.env:LIGHTNING_MLFLOW_EXT_SURELY_UNSET_VAR}",
        "mandatory": "???",
        "nested/bad": "${nope}",
        "nested/good": 4,
        "items": ["${nope}", 1],
    }


def test_none_flattens_to_an_empty_dict() -> None:
    assert flatten_hparams(None) == {}


@pytest.mark.parametrize("params", [[1, 2], (1,), "lr=0.1", 3, OmegaConf.create([1]), object()])
def test_unsupported_top_level_type_raises_type_error_naming_accepted_types(params: Any) -> None:
    with pytest.raises(TypeError) as info:
        flatten_hparams(params)
    message = str(info.value)
    for accepted in ("mapping", "argparse.Namespace", "dataclass instance", "DictConfig", "None"):
        assert accepted in message
    assert type(params).__qualname__ in message


# ---- render_value ---------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Mode(str, enum.Enum):
    TRAIN = "train"


class Plain:
    def method(self) -> None:
        pass


class WithRepr:
    def __repr__(self) -> str:
        return "WithRepr(k=1)"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def module_function(x: int) -> int:
    return x


Point = namedtuple("Point", ["x", "y"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        ("", ""),
        (True, "True"),
        (False, "False"),
        (3, "3"),
        (-7, "-7"),
        (0.1, "0.1"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (2.0, "2.0"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (None, "None"),
    ],
)
def test_scalars_render_as_expected(value: Any, expected: str) -> None:
    assert render_value(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int64(5), "5"),
        (np.float64(0.1), "0.1"),
        (np.float32(0.5), "0.5"),
        (np.bool_(True), "True"),
        (np.array(2.5), "2.5"),
        (np.array([[1, 2], [3, 4]]), "[[1, 2], [3, 4]]"),
        (np.array([], dtype=np.float32), "[]"),
        (torch.tensor(0.25), "0.25"),
        (torch.tensor(3), "3"),
        (torch.tensor(True), "True"),
        (torch.tensor([1.5, 2.0]), "[1.5, 2.0]"),
        (torch.tensor([[1, 2]]), "[[1, 2]]"),
        (torch.tensor([1.0], requires_grad=True), "[1.0]"),
        (torch.float32, "torch.float32"),
        (torch.bfloat16, "torch.bfloat16"),
        (torch.device("cpu"), "cpu"),
        (torch.device("cuda", 1), "cuda:1"),
    ],
)
def test_numpy_and_torch_values_render_as_python_values(value: Any, expected: str) -> None:
    assert render_value(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1, "a", None], "[1, a, None]"),
        ([], "[]"),
        ((1, 2.5), "(1, 2.5)"),
        ((1,), "(1,)"),
        ((), "()"),
        ({3, 1, 2}, "{1, 2, 3}"),
        (frozenset({"b", "a"}), "{a, b}"),
        (set(), "set()"),
        (frozenset(), "frozenset()"),
        ({"b": 1, "a": [0.1]}, "{b: 1, a: [0.1]}"),
        ([{"k": (1, True)}], "[{k: (1, True)}]"),
        (Point(1, 2), "Point(x=1, y=2)"),
        (Namespace(a=1, b="x"), "Namespace(a=1, b=x)"),
        (Optim(), "Optim(lr=0.001, betas=(0.9, 0.999))"),
    ],
)
def test_containers_render_their_elements(value: Any, expected: str) -> None:
    assert render_value(value) == expected


def test_set_order_does_not_depend_on_the_hash_seed() -> None:
    words = ["delta", "alpha", "charlie", "bravo", "echo"]
    expected = "{alpha, bravo, charlie, delta, echo}"
    assert render_value(set(words)) == expected
    code = f"print(hparams.render_value(set({words!r})))"
    for seed in ("1", "2", "3"):
        assert run_alone("hparams", code, hash_seed=seed) == expected


def test_self_containing_list_renders_without_recursing_forever() -> None:
    items: list[Any] = [1]
    items.append(items)
    assert render_value(items) == "[1, ...]"


def test_paths_render_as_their_text() -> None:
    assert render_value(PurePosixPath("/data/train.csv")) == "/data/train.csv"
    assert render_value(PureWindowsPath("C:/data")) == "C:\\data"
    assert render_value(Path("rel/dir")) == "rel/dir"


def test_enums_render_as_class_and_member_name() -> None:
    assert render_value(Color.RED) == "Color.RED"
    assert render_value(Level.HIGH) == "Level.HIGH"
    assert render_value(Mode.TRAIN) == "Mode.TRAIN"


def test_functions_classes_and_builtins_render_as_qualified_names() -> None:
    assert render_value(module_function) == f"{__name__}.module_function"
    assert render_value(Plain) == f"{__name__}.Plain"
    assert render_value(Plain().method) == f"{__name__}.Plain.method"
    assert render_value(Plain.method) == f"{__name__}.Plain.method"
    assert render_value(len) == "builtins.len"
    assert render_value(int) == "builtins.int"
    assert render_value(math.sqrt) == "math.sqrt"
    assert render_value([].append) == "list.append"
    assert render_value(str.upper) == "str.upper"
    assert render_value(torch.optim.Adam) == "torch.optim.adam.Adam"
    assert render_value(torch.nn.functional.relu) == "torch.nn.functional.relu"


def test_lambda_renders_as_its_qualified_name_without_an_address() -> None:
    assert render_value(lambda x: x) == (
        f"{__name__}.test_lambda_renders_as_its_qualified_name_without_an_address.<locals>.<lambda>"
    )


def test_partial_renders_function_and_arguments() -> None:
    expected = f"functools.partial({__name__}.module_function, 3)"
    assert render_value(functools.partial(module_function, 3)) == expected
    assert render_value(functools.partial(max, [1.5], key=abs)) == (
        "functools.partial(builtins.max, [1.5], key=builtins.abs)"
    )
    assert render_value(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)) == (
        "functools.partial(torch.optim.sgd.SGD, lr=0.1, momentum=0.9)"
    )


def test_object_with_default_repr_renders_as_its_class_without_an_address() -> None:
    text = render_value(Plain())
    assert text == f"<{__name__}.Plain>"
    assert "0x" not in text
    assert render_value(object()) == "<builtins.object>"
    assert render_value([Plain(), {"o": Plain()}]) == f"[<{__name__}.Plain>, {{o: <{__name__}.Plain>}}]"


@dataclasses.dataclass
class Holder:
    fn: Any
    obj: Any


def test_dataclass_holding_a_function_renders_without_an_address() -> None:
    text = render_value(Holder(module_function, Plain()))
    assert text == f"Holder(fn={__name__}.module_function, obj=<{__name__}.Plain>)"


def test_object_with_custom_repr_renders_as_that_repr() -> None:
    assert render_value(WithRepr()) == "WithRepr(k=1)"
    assert render_value(torch.nn.ReLU()) == "ReLU()"
    assert render_value(b"ab") == "b'ab'"
    assert render_value(1 + 2j) == "(1+2j)"


def test_tensor_without_data_renders_as_its_repr() -> None:
    assert render_value(torch.empty(3, device="meta")) == "tensor(..., device='meta', size=(3,))"


def test_object_whose_repr_raises_renders_as_its_class() -> None:
    assert render_value(BrokenRepr()) == f"<{__name__}.BrokenRepr>"


def test_omegaconf_containers_inside_values_render_like_plain_ones() -> None:
    cfg = OmegaConf.create({"a": [1, "${b}"], "b": 2})
    assert render_value([cfg]) == "[{a: [1, 2], b: 2}]"
    assert render_value(cfg.a) == "[1, 2]"


# ---- render_hparams -------------------------------------------------------------------------------------


def test_render_hparams_flattens_renders_strips_urls_and_redacts() -> None:
    params = {
        "optim": {"lr": 1e-4, "cls": torch.optim.Adam},
        "data": {"url": "https://user:pw@host/data.csv", "root": PurePosixPath("/d")},
        "wandb": {"api_key": "abc123"},
        "layers": [64, 32],
        "flag": None,
    }
    assert render_hparams(params) == {
        "optim/lr": "0.0001",
        "optim/cls": "torch.optim.adam.Adam",
        "data/url": "https://host/data.csv",
        "data/root": "/d",
        "wandb/api_key": REDACTED,
        "layers": "[64, 32]",
        "flag": "None",
    }


def test_render_hparams_of_none_is_empty() -> None:
    assert render_hparams(None) == {}


# ---- secrets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "hf/token",
        "HF_TOKEN",
        "HFToken",
        "apiKey",
        "APIKey",
        "apikey",
        "api-key",
        "api key",
        "wandb.api_key",
        "aws.secret_access_key",
        "AWS_ACCESS_KEY_ID",
        "privateKey",
        "ssh_privatekey",
        "private_key_path",
        "ssh/passphrase",
        "auth_token",
        "client_secret",
        "db.passwd",
        "PWD",
        "gcp/credentials",
        "credential",
        "secrets/db",
        "user:password",
        "password2",
        "token_dim",
    ],
)
def test_secret_keys_are_detected(key: str) -> None:
    assert is_secret_key(key) is True


@pytest.mark.parametrize(
    "key",
    [
        "max_tokens",
        "num_tokens",
        "tokenizer",
        "tokenizer/name",
        "secretary",
        "passwords_count",
        "keyword",
        "api_url",
        "access_log",
        "key",
        "primary_key",
        "lr",
        "optimizer/betas",
        "monkey",
        "passthrough",
        "",
    ],
)
def test_non_secret_keys_are_not_redacted(key: str) -> None:
    assert is_secret_key(key) is False


def test_redact_secrets_replaces_only_secret_values_and_keeps_order() -> None:
    params = {"lr": "0.1", "db_password": "hunter2", "tokenizer": "bpe", "HF_TOKEN": "hf_abc"}
    redacted = redact_secrets(params)
    assert redacted == {"lr": "0.1", "db_password": REDACTED, "tokenizer": "bpe", "HF_TOKEN": REDACTED}
    assert REDACTED == "[redacted]"
    assert list(redacted) == list(params)
    assert params["db_password"] == "hunter2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://ghp_abc123@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://user:s3cret@example.com:8443/path?q=1", "https://example.com:8443/path?q=1"),
        ("ssh://git:pa55@host.example:22/repo", "ssh://host.example:22/repo"),
        ("git+https://oauth2:tok@gitlab.com/g/p.git", "git+https://gitlab.com/g/p.git"),
        ("s3://AKIA:secret@bucket/key", "s3://bucket/key"),
        ("postgresql+psycopg2://admin:pw@db:5432/mlflow", "postgresql+psycopg2://db:5432/mlflow"),
        ("postgres://u:p@ss@db/x", "postgres://db/x"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("https://github.com/org/repo", "https://github.com/org/repo"),
        ("mail me at a@b.com", "mail me at a@b.com"),
        ("https://host/path?email=a@b.com", "https://host/path?email=a@b.com"),
        ("https://host?email=a@b.com", "https://host?email=a@b.com"),
        ("{'a': 'https://h', 'b': 'x@y'}", "{'a': 'https://h', 'b': 'x@y'}"),
        (
            "pip install git+https://u:t1@host/a.git and clone https://tok@host/b.git",
            "pip install git+https://host/a.git and clone https://host/b.git",
        ),
    ],
)
def test_url_credentials_are_stripped(text: str, expected: str) -> None:
    assert strip_url_credentials(text) == expected


# ---- truncate_value -------------------------------------------------------------------------------------


def test_text_within_the_limit_is_unchanged() -> None:
    assert truncate_value("abc", 3) == ("abc", False)
    assert truncate_value("x" * MAX_PARAM_VAL_LENGTH) == ("x" * MAX_PARAM_VAL_LENGTH, False)


def test_long_text_is_cut_with_a_marker_counting_removed_chars() -> None:
    text, cut = truncate_value("x" * 7000)
    marker = "... [truncated 1026 chars]"
    assert cut is True
    assert text == "x" * (6000 - len(marker)) + marker
    assert len(text) == 6000


def test_marker_includes_the_note() -> None:
    text, cut = truncate_value("abcdefghij" * 10, 60, note=", full value in params.json")
    assert (text, cut) == ("abcdefghi... [truncated 91 chars, full value in params.json]", True)
    assert len(text) == 60


@pytest.mark.parametrize("length", [31, 40, 100, 1009, 1010, 1011, 10_000, 100_000])
def test_truncated_text_is_exactly_the_limit_and_counts_correctly(length: int) -> None:
    source = "".join(chr(ord("a") + i % 26) for i in range(length))
    text, cut = truncate_value(source, 30)
    assert cut is True
    assert len(text) == 30
    prefix, _, rest = text.partition("... [truncated ")
    assert source.startswith(prefix)
    assert rest == f"{length - len(prefix)} chars]"


def test_limit_too_small_for_the_marker_cuts_without_a_marker() -> None:
    assert truncate_value("abcdefghijklmnop", 5) == ("abcde", True)
    assert truncate_value("abc", 0) == ("", True)


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError):
        truncate_value("abc", -1)


def test_name_mapper_survives_pickling_with_its_mapping():
    import pickle

    mapper = NameMapper()
    assert mapper.map("a@b") == "a_b"
    copy = pickle.loads(pickle.dumps(mapper))
    assert copy.map("a@b") == "a_b"
    assert copy.map("a_b") != "a_b"  # the name is still taken by "a@b"
