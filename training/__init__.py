"""Datasets, weak-label protocols, metrics and (later) training of students."""
