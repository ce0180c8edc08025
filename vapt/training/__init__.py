"""Training: the LightningModule, resume, `vapt tune` and the sweep machinery (cached trunk, K configurations
in one pass, cluster engines)."""
