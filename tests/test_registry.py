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
