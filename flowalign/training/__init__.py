"""Training: the one loop (``trainer.Trainer``), its configuration and its parts."""
