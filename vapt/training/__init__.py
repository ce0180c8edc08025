"""Training of prompt-tuned ViTs: the LightningModule (:mod:`.module`), the ``vapt fit|validate|test|predict``
command (:mod:`.lightning_cli`, with config-key suggestions in :mod:`.config_keys`), crash-safe resuming
(:mod:`.resume`) and the official lr x wd search (:mod:`.tune`). Each module is imported on its own."""
