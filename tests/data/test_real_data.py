"""On ../shared/data (skipped cleanly where it is absent)."""

import pytest

from covidct_bench.data import get_dataset, load_manifest
from covidct_bench.data.audit import audit_manifest

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    from tests.conftest import SHARED_DATA
    if not (SHARED_DATA / "covid-ct").is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("real")
    get_dataset("covid-ct").fetch(root=root, source=str(SHARED_DATA / "covid-ct"))
    get_dataset("medseg").fetch(root=root, source=str(SHARED_DATA / "medseg-covid19"))
    return root


def test_official_counts_and_no_patient_leakage(real_root):
    a = audit_manifest(load_manifest("covid-ct", real_root))
    assert a["counts"] == {"train": {"covid": 191, "non_covid": 234}, "val": {"covid": 60, "non_covid": 58},
                           "test": {"covid": 98, "non_covid": 105}}
    assert a["patient_leakage"] == 0
    assert a["extension_mismatch"] == 34  # COVID '.png' files holding JPEG bytes
    assert a["available"]["caption"] == 336 and a["available"]["sex"] == 137


def test_known_cross_class_near_duplicate(real_root):
    """A COVID test image reappears (re-encoded) among the non-COVID training images."""
    a = audit_manifest(load_manifest("covid-ct", real_root))
    pairs = {frozenset((e["a"], e["b"])) for e in a["near_duplicates"]["examples_across_splits"]}
    assert frozenset(("CT_COVID/kjr-21-e24-p5-29.png", "CT_NonCOVID/71%0.jpg")) in pairs


def test_medseg_slices(real_root):
    df = load_manifest("medseg", real_root)
    assert len(df) == 50 and df.lesion_mask_path.notna().all() and (df.label == 1).all()
