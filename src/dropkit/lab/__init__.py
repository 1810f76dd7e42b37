"""dropkit lab: train with and without dropout on real tasks and record every run."""
