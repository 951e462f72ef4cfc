import pytest

from tokenflow.data.synthetic import make_synthetic


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """A small synthetic benchmark in the real formats (shared, read-only)."""
    out = tmp_path_factory.mktemp("synth")
    make_synthetic(out, images=(8, 4, 6), videos=(4, 2, 4), image_size=32, frames=10, seed=3)
    return out
