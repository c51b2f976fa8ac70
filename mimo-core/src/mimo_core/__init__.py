"""mimo-core: the shared library of mimo-pipeline."""
