"""Test setup: 8 host CPU devices for sharding tests, strict rank promotion, seeds."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed."""
    return np.random.default_rng(0)


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


# Most of the suite's time is XLA compiling programs that differ only in the
# Python closures around them; a persistent cache shared by the xdist workers
# compiles each distinct program once per run.
_CACHE_DIR = os.environ.get("ROOT_OPTAX_TEST_CACHE", "/tmp/root_optax_jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
