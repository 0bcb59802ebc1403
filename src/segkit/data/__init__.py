"""Data: competition adapters, file I/O, caching, augmentation, generators and folds."""
