"""Folder jobs (`sesam refine`, `sesam segment`, `sesam cam`): resumable, atomic per image, with
overlays and an HTML report; and the `models` package's subcommands (`models.jobs.cli`)."""
