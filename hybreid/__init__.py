"""hybreid: hybrid CNN + Transformer person re-identification, from training to edge cameras."""

__version__ = "0.1.0"
