"""Properties of the values modules that hold for every input, checked with hypothesis: MLflow names,
flattening, rendering, redaction; and the user's own ``redact=`` patterns, read back from real runs."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.utils.validation import _validate_metric_name, _validate_param_name, _validate_tag_name
from omegaconf import OmegaConf
from omegaconf.errors import UnsupportedValueType
from tiny import TinyData, TinyModel, make_trainer

from lightning_mlflow_ext import MLflowLogger, autolog
from lightning_mlflow_ext.values.hparams import flatten_hparams, render_hparams, render_value
from lightning_mlflow_ext.values.names import MAX_ENTITY_KEY_LENGTH, NameMapper, is_valid_name
from lightning_mlflow_ext.values.redaction import REDACTED, Redactor, is_secret_key, redact_secrets

NAMES_PY = Path(__file__).resolve().parents[1] / "src" / "lightning_mlflow_ext" / "values" / "names.py"

# No example database: nothing is written into the checkout, and every run draws afresh.
PROPERTY = settings(max_examples=200, deadline=None, database=None)


# ---- strategies -----------------------------------------------------------------------------------------

# Characters that make names invalid or interesting: separators MLflow refuses ("@", "\n", "\\"), dot segments,
# slashes to double, non-ASCII word characters, and the ones it allows (" ", ":", "-").
_TRICKY = "ab/./..:- _@\n\\\t%λ準"
keys = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=_TRICKY, max_size=24),
    st.text(alphabet="ab/._", min_size=230, max_size=300),
    st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,3}", fullmatch=True),
)
key_lists = st.lists(keys, max_size=30)


def mlflow_accepts(name: str) -> bool:
    """MLflow's own checks for a metric, param and tag name, plus its length limit for keys."""
    try:
        for validate in (_validate_metric_name, _validate_param_name, _validate_tag_name):
            validate(name)
    except mlflow.exceptions.MlflowException:
        return False
    return len(name) <= MAX_ENTITY_KEY_LENGTH


SECRET_WORDS = [
    "password", "passwd", "pwd", "passphrase", "secret", "secrets", "token", "credential", "credentials",
    "api_key", "access_key", "secret_key", "private_key", "auth_token", "client_secret",
]  # fmt: skip
NOT_SECRET_WORDS = ["max_tokens", "num_tokens", "tokenizer", "secretary", "tokenizer_name", "primary_key", "api_url"]
BENIGN_WORDS = ["db", "hf", "aws", "model", "optimizer", "wandb", "user", "lr", "data", "s3", "layer2", "Train"]
SEPARATORS = ["_", "-", ".", "/", " ", ":"]


def _camel(words: list[str]) -> str:
    return words[0] + "".join(word.title() for word in words[1:])


# Ways a word of one or more segments ("api_key" -> ["api", "key"]) is written in a key.
SPELLINGS = {
    "snake": lambda words: "_".join(words),
    "kebab": lambda words: "-".join(words),
    "dotted": lambda words: ".".join(words),
    "nested": lambda words: "/".join(words),
    "upper": lambda words: "_".join(words).upper(),
    "camel": _camel,
    "pascal": lambda words: "".join(word.title() for word in words),
    "joined": lambda words: "".join(words),
    "JOINED": lambda words: "".join(words).upper(),
}


@st.composite
def spelled(draw: st.DrawFn, word: str) -> str:
    return SPELLINGS[draw(st.sampled_from(sorted(SPELLINGS)))](word.split("_"))


@st.composite
def any_case(draw: st.DrawFn, word: str) -> str:
    """Any mix of cases, within segments written apart by a separator: "pAsSwOrD", "aPi.KeY"."""
    sep = draw(st.sampled_from(SEPARATORS))
    return sep.join("".join(c.upper() if draw(st.booleans()) else c for c in w) for w in word.split("_"))


@st.composite
def keys_around(draw: st.DrawFn, word: str, mixed_case: bool = False) -> str:
    """``word`` written some way, between benign words: "db_password", "hf.token", "DB_PASSWORD", "dbPassword"."""
    before = draw(st.lists(st.sampled_from(BENIGN_WORDS), max_size=2))
    after = draw(st.lists(st.sampled_from(BENIGN_WORDS), max_size=2))
    sep = draw(st.sampled_from(SEPARATORS))
    if before and not after and draw(st.booleans()):
        text = draw(spelled(word))
        return sep.join(before) + text[:1].upper() + text[1:]  # camelCase continuation: "dbPassword"
    text = draw(any_case(word) if mixed_case and draw(st.booleans()) else spelled(word))
    return sep.join([*before, text, *after])


secret_keys = st.sampled_from(SECRET_WORDS).flatmap(lambda word: keys_around(word, mixed_case=True))
not_secret_keys = st.sampled_from(NOT_SECRET_WORDS).flatmap(keys_around)
# Values no other part of a rendering can contain by chance.
secret_values = st.text(alphabet="0123456789abcdef", min_size=12, max_size=24).map(lambda s: "zq" + s)


@dataclasses.dataclass
class Login:
    user: str
    note: str = "shared account"


def hidden_in(value_holder: Any, draw: st.DrawFn) -> dict[Any, Any]:
    """``value_holder`` wrapped in 0-3 layers of the containers hyperparameters come in."""
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["dict", "list", "tuple", "namespace", "omegaconf"]))
        outer = draw(st.sampled_from(BENIGN_WORDS))
        if kind == "dict":
            value_holder = {outer: value_holder, "seed": 7}
        elif kind == "list":
            value_holder = [1, value_holder]
        elif kind == "tuple":
            value_holder = (value_holder,)
        elif kind == "namespace":
            value_holder = Namespace(**{outer: value_holder})
        elif isinstance(value_holder, dict):
            # (unless a Namespace or dataclass of ours is inside: OmegaConf holds neither)
            with contextlib.suppress(UnsupportedValueType):
                value_holder = OmegaConf.create({outer: value_holder})
    # Hyperparameters are a mapping at the top.
    return value_holder if isinstance(value_holder, dict) else {"config": value_holder}


# ---- names: valid, never merged, the same in every process -------------------------------------------------


@PROPERTY
@given(st.one_of(keys, st.text(alphabet="a/.: \n", max_size=8)))
def test_is_valid_name_agrees_with_mlflows_own_validator(text: str) -> None:
    # MLflow's `^...$` lets one trailing newline through; a name ending in one is not worth the risk.
    assert is_valid_name(text) == (mlflow_accepts(text) and not text.endswith("\n"))


@PROPERTY
@given(key_lists)
def test_every_mapped_name_is_one_mlflow_accepts(key_list: list[str]) -> None:
    mapper = NameMapper()
    for key in key_list:
        name = mapper.map(key)
        assert 0 < len(name) <= MAX_ENTITY_KEY_LENGTH
        assert "//" not in name and not name.startswith("/") and not name.endswith("/")
        assert is_valid_name(name)
        assert mlflow_accepts(name), name


@PROPERTY
@given(st.lists(keys, unique=True, max_size=30).flatmap(lambda ks: st.permutations(ks)))
def test_two_different_keys_never_share_a_name_whatever_the_order(key_list: list[str]) -> None:
    mapper = NameMapper()
    names = [mapper.map(key) for key in key_list]
    assert len(set(names)) == len(key_list)
    # ... and each key keeps its name for the life of the mapper.
    assert [mapper.map(key) for key in reversed(key_list)] == names[::-1]


@PROPERTY
@given(key_lists)
def test_two_fresh_mappers_given_the_same_keys_give_the_same_names(key_list: list[str]) -> None:
    first, second = NameMapper(), NameMapper()
    assert [first.map(key) for key in key_list] == [second.map(key) for key in key_list]


@PROPERTY
@given(st.one_of(keys, st.from_regex(r"[\w.\- :/]{1,250}", fullmatch=True)).filter(mlflow_accepts))
def test_a_key_mlflow_accepts_maps_to_itself(key: str) -> None:
    if key.endswith("\n"):
        return  # see test_is_valid_name_agrees_with_mlflows_own_validator
    mapper = NameMapper()
    assert mapper.map(key) == key
    assert key not in mapper.renamed


@settings(max_examples=2, deadline=None, database=None)
@given(st.lists(keys, min_size=20, max_size=60))
def test_names_are_the_same_in_a_process_with_another_string_hash_seed(key_list: list[str]) -> None:
    # hash() of a str is salted per process: a name that depended on it would differ between two ranks, or
    # between a run and its resume.
    code = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("names_alone", {str(NAMES_PY)!r})
        names = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(names)
        mapper = names.NameMapper()
        print(json.dumps({{"hash": hash("probe"), "names": [mapper.map(k) for k in json.load(sys.stdin)]}}))
        """
    )
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(key_list),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": seed},
    )
    there = json.loads(done.stdout)
    assert there["hash"] != hash("probe"), "the two processes must salt str hashes differently"
    mapper = NameMapper()
    assert there["names"] == [mapper.map(key) for key in key_list]


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded SQLite store for the module: creating one takes seconds, and each test uses its own runs."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture(scope="module")
def store(sqlite_uri: str) -> MlflowClient:
    return MlflowClient(sqlite_uri)


# conftest's autouse isolation fixture is per test; the examples of one test may share it.
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(keys, unique=True, min_size=1, max_size=40))
def test_a_real_store_takes_every_mapped_name_and_keeps_keys_apart(store: MlflowClient, key_list: list[str]) -> None:
    mapper = NameMapper()
    names = [mapper.map(key) for key in key_list]
    run = store.create_run("0")
    store.log_batch(
        run.info.run_id,
        metrics=[Metric(name, float(i), 0, 0) for i, name in enumerate(names)],
        params=[Param(name, str(i)) for i, name in enumerate(names)],
    )
    data = store.get_run(run.info.run_id).data
    assert data.params == {name: str(i) for i, name in enumerate(names)}
    assert data.metrics == {name: float(i) for i, name in enumerate(names)}


# ---- flattening: every leaf once, under its path -------------------------------------------------------------

# Keys that often spell the same path: "a/b" beside {"a": {"b": ...}}, "" and "/", the int 1 beside "1".
flat_keys = st.one_of(st.text(alphabet="ab/", max_size=3), st.integers(0, 2))
leaves = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.text(max_size=2), st.integers()),
    st.frozensets(st.text(max_size=3), max_size=3),
)


def _as_dataclass(fields: dict[str, Any]) -> Any:
    cls = dataclasses.make_dataclass("Generated", [(f"f{i}", Any) for i in range(len(fields))])
    return cls(*fields.values())


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.dictionaries(flat_keys, children, max_size=4),
        st.dictionaries(st.text(alphabet="ab/_", max_size=3), children, max_size=4).map(lambda d: Namespace(**d)),
        st.dictionaries(st.text(max_size=1), children, max_size=3).map(_as_dataclass),
    )


hparams = _containers(st.recursive(leaves, _containers, max_leaves=20))


def walk_leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, leaf) for every leaf, depth first, as a user would list them by hand."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, Namespace):
        items = list(vars(value).items())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    else:
        yield path, value
        return
    for key, item in items:
        yield from walk_leaves(item, (*path, key))


@PROPERTY
@given(hparams)
def test_every_leaf_appears_exactly_once_under_its_slash_joined_path(params: Any) -> None:
    expected = list(walk_leaves(params))
    flat = flatten_hparams(params)
    assert len(flat) == len(expected)  # nothing merged, nothing lost
    for (path, leaf), (key, value) in zip(expected, flat.items(), strict=True):
        assert value is leaf
        joined = "/".join(str(part) for part in path)
        # A path that spells a key an earlier leaf took keeps its value under that key with a suffix.
        assert key == joined or (key.startswith(joined + "-") and joined in flat)


@PROPERTY
@given(hparams)
def test_rendering_is_stable_and_idempotent(params: Any) -> None:
    rendered = render_hparams(params)
    assert rendered == render_hparams(copy.deepcopy(params))
    assert len(rendered) == len(flatten_hparams(params))
    for text in rendered.values():
        assert render_value(text) == text
        assert " at 0x" not in text


@PROPERTY
@given(st.lists(st.text(max_size=4), max_size=8))
def test_a_set_renders_the_same_whatever_order_it_was_built_in(items: list[str]) -> None:
    assert render_value(set(items)) == render_value(set(reversed(items)))
    assert render_value(frozenset(items)) == render_value(set(items)).replace("set()", "frozenset()")


def test_a_config_that_holds_itself_is_flattened_and_rendered_without_recursing_forever() -> None:
    config: dict[str, Any] = {"lr": 0.1, "db": {"password": "zq-leak"}}
    config["self"] = config
    params = render_hparams(config)
    assert params == {"lr": "0.1", "db/password": REDACTED, "self": "{lr: 0.1, db: {password: [redacted]}, self: ...}"}


# ---- redaction: a secret-looking key never leaks its value --------------------------------------------------


@PROPERTY
@given(secret_keys)
def test_secret_looking_keys_are_recognized_in_any_spelling(key: str) -> None:
    assert is_secret_key(key), key


@PROPERTY
@given(not_secret_keys)
def test_keys_that_merely_contain_a_secret_word_are_kept(key: str) -> None:
    assert not is_secret_key(key), key
    assert render_hparams({key: 512}) == {key: "512"}


@PROPERTY
@given(st.data(), secret_keys, secret_values)
def test_a_secret_value_never_appears_in_the_rendered_params(data: st.DataObject, key: str, secret: str) -> None:
    params = hidden_in({key: secret, "max_tokens": 512}, data.draw)
    rendered = render_hparams(params)
    assert not any(secret in text for text in rendered.values()), rendered
    assert "512" in "".join(rendered.values())  # the neighbour that is no secret stays


@PROPERTY
@given(st.data(), secret_keys, secret_values)
def test_everything_under_a_secret_key_is_hidden(data: st.DataObject, key: str, secret: str) -> None:
    below = data.draw(
        st.sampled_from(
            [
                {"user": secret, "host": "db.local"},
                [secret, "second"],
                (secret,),
                Namespace(user=secret),
                Login(user=secret),
                {"aws": {"region": secret}},
            ]
        )
    )
    rendered = render_hparams(hidden_in({key: below}, data.draw))
    assert not any(secret in text for text in rendered.values()), rendered


@PROPERTY
@given(secret_keys, secret_values)
def test_redact_secrets_replaces_the_value_of_a_secret_key(key: str, secret: str) -> None:
    assert redact_secrets({key: secret, "lr": "0.1"}) == {key: REDACTED, "lr": "0.1"}


def test_nested_secrets_of_the_issue_are_hidden() -> None:
    params = {
        "aws": {"secret_access_key": "zq-aws"},
        "credentials": {"user": "zq-user"},
        "servers": [{"host": "a", "password": "zq-pw"}],
        "connect": Namespace(dsn="postgres://db", api_key="zq-key"),
        "max_tokens": 512,
        "tokenizer": "bpe",
    }
    assert render_hparams(params) == {
        "aws/secret_access_key": REDACTED,
        "credentials/user": REDACTED,
        "servers": f"[{{host: a, password: {REDACTED}}}]",
        "connect/dsn": "postgres://db",
        "connect/api_key": REDACTED,
        "max_tokens": "512",
        "tokenizer": "bpe",
    }


# ---- the user's own patterns --------------------------------------------------------------------------------

USER_WORDS = ["wandb_key", "ssn", "org_salt", "hmac_seed"]


@PROPERTY
@given(st.sampled_from(USER_WORDS).flatmap(lambda word: st.tuples(st.just(word), keys_around(word, mixed_case=True))))
def test_a_users_word_hides_its_key_in_any_spelling(word_and_key: tuple[str, str]) -> None:
    word, key = word_and_key
    assert Redactor.of([word]).is_secret(key)
    assert not is_secret_key(key)  # not a built-in word: the user's pattern is what hides it


@PROPERTY
@given(st.sampled_from(BENIGN_WORDS), st.sampled_from(BENIGN_WORDS))
def test_a_users_regex_is_searched_in_the_whole_key(first: str, second: str) -> None:
    redactor = Redactor.of([r"^internal/"])
    assert redactor.is_secret(f"internal/{first}/{second}")
    assert not redactor.is_secret(f"{first}/internal/{second}")
    assert redactor.is_secret(f"{first}_password")  # the built-in words stay


def test_a_single_string_is_one_pattern_and_patterns_can_be_compiled() -> None:
    import re

    assert Redactor.of("wandb_key") == Redactor.of(["wandb_key"])
    assert Redactor.of([re.compile(r"(?i)salt$")]).is_secret("db/SALT")
    assert Redactor.of(None) == Redactor.of([])


@pytest.mark.parametrize("pattern", ["(unclosed", "[a-", "*x", "a{2,1}", "(?P<1>x)"])
def test_a_bad_regex_is_refused_naming_it_and_what_to_do(pattern: str) -> None:
    with pytest.raises(ValueError) as info:
        Redactor.of(["wandb_key", pattern])
    message = str(info.value)
    assert repr(pattern) in message
    assert "not a valid regular expression" in message and "re.escape" in message


@pytest.mark.parametrize("pattern", ["", "  ", "--", "/"])
def test_a_pattern_that_can_match_nothing_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="matches no key"):
        Redactor.of([pattern])


def test_a_pattern_that_is_not_text_is_refused() -> None:
    with pytest.raises(TypeError, match="redact entries must be strings"):
        Redactor.of([42])  # type: ignore[list-item]


# ---- redact= on the logger and autolog, read back from real runs ---------------------------------------------


class ServiceModel(TinyModel):
    """TinyModel whose hyperparameters hold secrets of the user's own naming beside ordinary values."""

    def __init__(self, **extra: Any) -> None:
        super().__init__(
            wandb_key="zq-wandb",
            internal={"db_host": "zq-host", "port": 5432},
            db_password="zq-db",
            max_tokens=512,
            team="vision",
            **extra,
        )


def assert_no_secret_in(run: Any) -> None:
    recorded = [*run.data.params.values(), *run.data.tags.values()]
    assert not [text for text in recorded if "zq-" in text]


def test_secret_value_never_reaches_the_run(sqlite_uri: str) -> None:
    logger = MLflowLogger(
        experiment_name="redact-user-patterns",
        tracking_uri=sqlite_uri,
        tags={"wandb_key": "zq-tag", "owner": "ml-team"},
        redact=["wandb_key", r"^internal/"],
    )
    make_trainer(logger, max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(ServiceModel(), TinyData())
    run = MlflowClient(sqlite_uri).get_run(logger.run_id)
    params = run.data.params
    assert params["wandb_key"] == REDACTED  # the user's word
    assert params["internal/db_host"] == params["internal/port"] == REDACTED  # the user's regex
    assert params["db_password"] == REDACTED  # built in
    assert (params["max_tokens"], params["team"], params["lr"]) == ("512", "vision", "0.1")
    assert run.data.tags["wandb_key"] == REDACTED
    assert run.data.tags["owner"] == "ml-team"
    assert_no_secret_in(run)


def test_without_redact_only_the_built_in_words_are_hidden(sqlite_uri: str) -> None:
    logger = MLflowLogger(experiment_name="redact-built-in", tracking_uri=sqlite_uri)
    make_trainer(logger, max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(ServiceModel(), TinyData())
    params = MlflowClient(sqlite_uri).get_run(logger.run_id).data.params
    assert (params["wandb_key"], params["internal/db_host"]) == ("zq-wandb", "zq-host")
    assert params["db_password"] == REDACTED


@pytest.fixture
def autolog_reset() -> Iterator[None]:
    from mlflow.tracking._tracking_service import utils as tracking_utils

    import lightning_mlflow_ext.trainer.autolog as autologging

    global_uri = tracking_utils._tracking_uri
    yield
    tracking_utils._tracking_uri = global_uri
    autologging._options = None
    autologging._enabled = False


@pytest.mark.usefixtures("autolog_reset")
def test_autolog_takes_the_users_patterns_too(sqlite_uri: str) -> None:
    autolog(experiment_name="redact-autolog", tracking_uri=sqlite_uri, redact=["wandb_key"])
    make_trainer(False, max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(ServiceModel(), TinyData())
    client = MlflowClient(sqlite_uri)
    experiment = client.get_experiment_by_name("redact-autolog")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["wandb_key"] == REDACTED
    assert run.data.params["internal/db_host"] == "zq-host"  # no regex given this time
    assert run.data.params["team"] == "vision"


def test_a_bad_pattern_fails_when_the_logger_is_made_before_the_store_is_touched(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'\(unclosed'.*re\.escape"):
        MLflowLogger(experiment_name="redact", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", redact=["(unclosed"])
    assert not (tmp_path / "mlflow.db").exists()
