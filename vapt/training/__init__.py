"""Training of prompt-tuned ViTs: the LightningModule (:mod:`.module`), the ``vapt fit|validate|test|predict``
command (:mod:`.lightning_cli`, with config-key suggestions in :mod:`.config_keys`), crash-safe resuming
(:mod:`.resume`), the official lr x wd search (:mod:`.tune`) and what makes it cheap and spread out: runs
(:mod:`.runs`), the cached frozen trunk (:mod:`.trunk_cache`), decoded images kept once (:mod:`.decoded`),
K configurations per pass (:mod:`.stacked`), submitit jobs (:mod:`.sweep_engine`) and cost prediction
(:mod:`.estimate`). Each module is imported on its own."""
