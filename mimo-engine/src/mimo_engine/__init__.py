"""mimo-engine."""
