"""Conformance suites for plugin authors: the tests every built-in passes, for your own.

Like ``optuna.testing.pytest_samplers``: each suite is a pytest class that you subclass in
your own tests, overriding the one fixture that supplies your implementation; every test of
the suite then runs on it, exactly as on the built-ins (stagetune's own tests run the suites
on every registered implementation)::

    import pytest
    from stagetune.testing.growth import GrowthOperatorSuite

    class TestMirror(GrowthOperatorSuite):
        @pytest.fixture
        def operator(self):
            return Mirror()

============================================ ==================================================
:mod:`stagetune.testing.growth`              ``GrowthOperatorSuite`` (fixture ``operator``)
:mod:`stagetune.testing.families`            ``ModelFamilySuite`` (fixture ``adapter``)
:mod:`stagetune.testing.freeze`              ``FreezePolicySuite`` (fixture ``policy``)
:mod:`stagetune.testing.search_spaces`       ``SearchSpaceSuite`` (fixture ``space``)
:mod:`stagetune.testing.data_sources`        ``DataSourceSuite`` (fixture ``make_source``)
============================================ ==================================================

The suites import pytest (a development dependency) and torch; nothing in stagetune's runtime
imports this package, so stagetune itself runs without pytest.
"""
