"""Analyses of networks and their samples, built on the metrics and feature networks."""
