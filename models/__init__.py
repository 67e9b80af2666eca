"""Everything that turns pixels, prompts and weak labels into masks."""
