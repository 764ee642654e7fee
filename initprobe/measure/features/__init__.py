"""Feature networks and hooks: the classifier and Inception extractors, layer capture."""
