"""Datasets, weak-label protocols, metrics, and the training of students: a generic loop
(`training.loop`) running one recipe per task (`training.recipes`)."""
