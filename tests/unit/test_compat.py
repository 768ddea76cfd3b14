"""The private Lightning and torch members listed in `effnet_lightning/compat.py`: each still
exists with the parameters relied on, a missing or changed one is named in one line, and the
package uses no private member of another library that the list leaves out."""

import ast
import importlib
import inspect
import pkgutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import DDPStrategy

import effnet_lightning
from effnet_lightning.compat import PRIVATE, PrivateMember

PACKAGE = Path(effnet_lightning.__file__).parent


# Members whose names start with "_" but which their library documents as public.
PUBLIC_BY_DOCS = {"_exit"}  # os._exit: leave at once, without cleanup (the DDP watchdog)


def instance_of(owner: str):
    """An object that carries the instance attributes an entry names."""
    if owner == "lightning.pytorch.Trainer":
        return Trainer(
            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
        )
    return {
        "lightning.pytorch.strategies.DDPStrategy": DDPStrategy,
        "lightning.pytorch.callbacks.WeightAveraging": WeightAveraging,
        "lightning.pytorch.LightningModule": LightningModule,
    }[owner]()


def resolve(owner: str):
    if owner == "torch.ops.mkldnn":
        return torch.ops.mkldnn
    module, _, name = owner.rpartition(".")
    try:
        return importlib.import_module(owner)
    except ImportError:
        return getattr(importlib.import_module(module), name)


def signatures(member, found) -> list[tuple[str, ...]]:
    """The parameter names of each form of `found` (operators and builtins have overloads)."""
    if isinstance(found, torch._ops.OpOverloadPacket):
        return [tuple(a.name for a in getattr(found, o)._schema.arguments) for o in found.overloads()]
    if member.owner == "torch":  # a builtin: its ATen operator's overloads
        return [
            tuple(a.name for a in s.arguments) for s in torch._C._jit_get_schemas_for_operator(f"aten::{member.name}")
        ]
    return [tuple(inspect.signature(found).parameters)]


def problem(member: PrivateMember) -> str | None:
    """None when `member` is there as relied on; else one line naming it, where it is used and why."""
    where = f"{member.qualname} (used in {member.used_in}: {member.why})"
    try:
        found = resolve(member.owner)
        if member.params is None and not inspect.ismodule(found) and member.name != "_BatchNorm":
            found = instance_of(member.owner)
        for part in member.name.split("."):
            found = getattr(found, part)
    except (AttributeError, ImportError, RuntimeError):
        return f"{where} is gone in this release: replace the use there"
    if member.params is not None:
        got = signatures(member, found)
        if member.params not in got:
            return f"{where} now takes ({', '.join(got[0] if got else ())}) instead of ({', '.join(member.params)}): adapt the use there"
    return None


def is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def private_names_owned_by_the_project() -> set[str]:
    owned = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                owned.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                owned.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and is_self(node.value):
                owned.add(node.attr)
    return owned


@pytest.mark.parametrize("member", PRIVATE, ids=lambda m: m.qualname)
def test_each_private_member_still_exists_with_the_parameters_relied_on(member):
    assert problem(member) is None, problem(member)
    assert (PACKAGE.parent / member.used_in).is_file()


def test_a_missing_or_changed_member_is_named_with_where_it_is_used():
    gone = PrivateMember("lightning.pytorch.cli.LightningCLI", "_gone", ("self",), "effnet_lightning/cli/app.py", "why")
    assert problem(gone) == (
        "lightning.pytorch.cli.LightningCLI._gone (used in effnet_lightning/cli/app.py: why) is gone in this "
        "release: replace the use there"
    )
    changed = replace(PRIVATE[0], params=("self", "config"))
    assert problem(changed).endswith(
        "now takes (self, config, callbacks) instead of (self, config): adapt the use there"
    )
    attribute = PrivateMember("lightning.pytorch.Trainer", "_signal_connector.gone", None, "x.py", "why")
    assert "is gone in this release" in problem(attribute)


def test_every_private_member_of_another_library_the_package_uses_is_listed():
    listed = {part for m in PRIVATE for part in m.name.split(".") if part.startswith("_")}
    owned = private_names_owned_by_the_project()
    unlisted = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.attr] if isinstance(node, ast.Attribute) else []
            names += [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                private = name.startswith("_") and not name.startswith("__")
                if private and name not in owned | listed | PUBLIC_BY_DOCS:
                    unlisted.add(f"{path.relative_to(PACKAGE.parent)}: {name}")
    assert not unlisted, f"private members used but not listed in effnet_lightning/compat.py: {sorted(unlisted)}"


def is_project_class(cls) -> bool:
    return cls.__module__.startswith("effnet_lightning")


def private_overrides() -> set[tuple[str, str, str]]:
    """(the other library's class, its private method, the project module that overrides it),
    for every project class and the project classes it mixes in."""
    overrides = set()
    for info in pkgutil.walk_packages(effnet_lightning.__path__, "effnet_lightning."):
        if info.name.endswith("__main__"):  # running it is the command line
            continue
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and cls.__module__ == info.name):
                continue
            for own in filter(is_project_class, cls.__mro__):
                for name, value in vars(own).items():
                    if not inspect.isfunction(value) or not name.startswith("_") or name.startswith("__"):
                        continue
                    for base in cls.__mro__:
                        if not is_project_class(base) and name in vars(base):
                            overrides.add((base.__name__, name, own.__module__))
    return overrides


def test_every_override_of_another_librarys_private_method_is_listed_and_lives_in_compat():
    listed = {(m.owner.rsplit(".", 1)[-1], m.name) for m in PRIVATE}
    overrides = private_overrides()
    overridden = {(owner, name) for owner, name, _ in overrides}
    assert overridden >= {
        ("LightningCLI", "_instantiate_trainer"),
        ("LightningCLI", "_prepare_subcommand_parser"),
        ("LightningCLI", "_parse_ckpt_path"),
        ("ModelCheckpoint", "_save_checkpoint"),
    }, "the CLI and the checkpoint callback override private methods through the compat mixins"
    assert overridden <= listed, f"overrides not listed in effnet_lightning/compat.py: {sorted(overridden - listed)}"
    elsewhere = {f"{where}: {name}" for _, name, where in overrides if where != "effnet_lightning.compat"}
    assert not elsewhere, f"private overrides outside effnet_lightning/compat.py: {sorted(elsewhere)}"
