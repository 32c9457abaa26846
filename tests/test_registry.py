"""The generic registry: registration, lookup errors, built-ins module and entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from stagetune.errors import ConfigError
from stagetune.registry import Registry


def test_register_get_and_names() -> None:
    reg: Registry[int] = Registry("widget", field="x.widget")
    assert reg.register("one", 1) == 1

    @reg.register("two")
    def two() -> int:
        return 2

    assert reg.get("one") == 1 and reg.get("two") is two
    assert reg.names() == ["one", "two"] and "one" in reg and len(reg) == 2
    with pytest.raises(ConfigError, match=r"x\.widget='onr'.*did you mean 'one'"):
        reg.get("onr")
    with pytest.raises(ConfigError, match="registered already"):
        reg.register("one", 11)
    reg.register("one", 11, replace=True)
    assert reg.get("one") == 11
    reg.unregister("one")
    assert "one" not in reg
    with pytest.raises(ConfigError, match="plain word"):
        reg.register("a/b", 3)


def _make_package(root: Path, name: str, body: str, entry_points: str = "") -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    if entry_points:
        info = root / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_builtins_module_and_entry_points_load_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reg: Registry[object] = Registry(
        "gadget", field="x.gadget", builtins="st_builtins_pkg", entry_point_group="st.test_gadgets"
    )
    monkeypatch.setattr("stagetune.registry.REG_UNDER_TEST", reg, raising=False)
    _make_package(
        tmp_path,
        "st_builtins_pkg",
        """
        from stagetune import registry
        registry.REG_UNDER_TEST.register("builtin", "B")
        """,
    )
    _make_package(
        tmp_path,
        "st_plugin_pkg",
        """
        GADGET = "P"
        """,
        entry_points="""
        [st.test_gadgets]
        plugin = st_plugin_pkg:GADGET
        builtin = st_plugin_pkg:GADGET
        broken = st_plugin_pkg:MISSING
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert reg.names() == ["builtin", "plugin"]
        assert reg.get("builtin") == "B", "a name registered explicitly wins over a plugin"
        assert reg.get("plugin") == "P"
        assert "broken" in caplog.text
    finally:
        for mod in ("st_builtins_pkg", "st_plugin_pkg"):
            sys.modules.pop(mod, None)


class Base:
    pass


def test_expects_refuses_the_wrong_kind_of_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    instances: Registry[object] = Registry("thing", field="x.thing", expects=f"{__name__}:Base")
    instances.register("ok", Base())
    with pytest.raises(TypeError, match="not a Base instance"):
        instances.register("class", Base)
    factories: Registry[object] = Registry(
        "maker", field="x.maker", entry_point_group="st.test_makers", expects="callable"
    )
    factories.register("ok", Base)
    with pytest.raises(TypeError, match="not callable"):
        factories.register("number", 42)
    # A plugin pointing at the wrong object is skipped where it loads, with the reason.
    _make_package(
        tmp_path,
        "st_maker_pkg",
        "NOT_A_FACTORY = 42\n",
        entry_points="[st.test_makers]\nbad = st_maker_pkg:NOT_A_FACTORY\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert factories.names() == ["ok"]
        assert "maker 'bad' is not callable" in caplog.text
    finally:
        sys.modules.pop("st_maker_pkg", None)


def test_isolated_undoes_registrations_and_reloads_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg: Registry[str] = Registry("widget", field="x.widget", entry_point_group="st.test_widgets")
    reg.register("kept", "K")
    _make_package(
        tmp_path,
        "st_widget_pkg",
        'WIDGET = "W"\n',
        entry_points="[st.test_widgets]\nlate = st_widget_pkg:WIDGET\n",
    )
    assert reg.names() == ["kept"]  # loaded before the package was on the path
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with reg.isolated():
            reg.register("temporary", "T")
            assert reg.names() == ["kept", "late", "temporary"]
        assert reg.names() == ["kept"]
    finally:
        sys.modules.pop("st_widget_pkg", None)
