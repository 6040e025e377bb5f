"""The docs site's generated parts and checks (docs/hooks/mlmkit_docs.py), without MkDocs: every
setting is in its command's flag table, a public name without a docstring is caught, a flag the
pages name that no command has is caught, and the README stays a quickstart."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import fields
from pathlib import Path

import pytest

from mlmkit import config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("mlmkit_docs", ROOT / "docs/hooks/mlmkit_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flags_of(table: str) -> set[str]:
    return set(re.findall(r"^\| `(--[a-z0-9-]+)", table, flags=re.M))


def _names(*classes):
    return [f.name for cls in classes for f in fields(cls)]


@pytest.mark.parametrize("command, names", [
    ("train", _names(config.TrainConfig)), ("eval", _names(config.EvalConfig)),
    ("fill", _names(config.EngineConfig, config.RayConfig)),
    # score takes the engine settings that apply to it (score_command.py) and Ray's
    ("score", ["device", "dtype", "max_tokens", "quiet", *_names(config.RayConfig)]),
    ("serve", _names(config.ServeConfig)),
])
def test_every_setting_is_in_its_commands_flag_table(hooks, command, names):
    listed = _flags_of(hooks.flag_table(command))
    for name in names:
        flag = "--" + name.replace("_", "-")
        assert flag in listed or "--no-" + flag[2:] in listed, (command, flag)


def test_flag_table_has_the_commands_own_flags_and_no_hidden_alias(hooks):
    table = hooks.flag_table("fill")
    assert "`--top-k N`" in table or "`--top-k VALUE`" in table
    assert "| `MODEL` |" in table and "`--model VALUE`" in table  # positional, or the flag
    assert "--batch_size" not in table and "--model_name_or_path" not in hooks.flag_table("train")


def test_field_table_lists_every_field_with_its_default(hooks):
    table = hooks.field_table("ServeConfig")
    for f in fields(config.ServeConfig):
        assert f"| `{f.name}` | `{f.default!r}` |" in table


def test_an_unknown_command_or_class_is_an_error(hooks):
    with pytest.raises(ValueError, match="no such mlmkit command"):
        hooks.expand("<!-- flags: trian -->")
    with pytest.raises(ValueError, match="not a settings class"):
        hooks.expand("<!-- fields: TrainConfg -->")


def test_a_public_name_without_a_docstring_is_reported(hooks, monkeypatch):
    from mlmkit.vocab.audit import VocabAudit

    prop = VocabAudit.__dict__["fertility"]
    assert "mlmkit.VocabAudit.fertility" not in hooks.missing_docstrings()
    monkeypatch.setattr(VocabAudit, "fertility", property(prop.fget, doc=""))
    monkeypatch.setattr(prop.fget, "__doc__", None)
    assert "mlmkit.VocabAudit.fertility" in hooks.missing_docstrings()


def test_a_dataclass_generated_docstring_does_not_count(hooks):
    from dataclasses import dataclass

    @dataclass
    class Undocumented:
        x: int = 1

    assert Undocumented.__doc__  # dataclasses write "Undocumented(x: int = 1)"
    assert not hooks._own_doc(Undocumented)


def test_api_page_lists_every_public_name(hooks):
    import mlmkit

    blocks = hooks.api_blocks()
    for name in mlmkit.__all__:
        if name != "__version__":
            assert re.search(rf"^::: mlmkit\.[\w.]+\.{name}$", blocks, flags=re.M), name


def test_pages_and_readme_name_only_flags_that_exist(hooks):
    assert hooks.unknown_flags("use `--epochs 3` and `--no-sparse-head`") == []
    assert hooks.unknown_flags("use `--epoch 3`") == ["--epoch"]
    pages = [p for p in (ROOT / "docs").glob("*.md") if p.name not in hooks.PAGES_OF_OTHER_FLAGS]
    for page in [*pages, ROOT / "README.md"]:
        assert hooks.unknown_flags(page.read_text(encoding="utf-8")) == [], page.name


def test_readme_is_a_quickstart():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("## Quickstart")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    assert len(lines) <= 200
    assert end - start <= 60
