"""Moved: the oracle is :mod:`bestshot.world.oracle` (this name stays for scripts written against it)."""

from bestshot.world.oracle import (ATTRIBUTES, Analysis, Blob, OracleResult, analyse, match_rate,  # noqa: F401
                                   oracle, relation_holds, to_array)
