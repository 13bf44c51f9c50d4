"""`hybreid demo`: the whole chain on synthetic data (see :mod:`hybreid.demo.pipeline`)."""
