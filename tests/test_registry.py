import pytest

from covidct_bench.errors import BenchError
from covidct_bench.registry import Registry


def test_registry():
    r = Registry("backbone")
    r.register("b")(1)
    r.register("a")(2)
    assert r.names() == ["a", "b"] and r.get("a") == 2 and "b" in r
    with pytest.raises(ValueError, match="registered twice"):
        r.register("a")(3)
    with pytest.raises(BenchError, match=r"unknown backbone 'c' \(known: a, b\)"):
        r.get("c")
