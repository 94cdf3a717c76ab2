"""Data sets, label spaces, labeled/unlabeled splits and augmented views."""
