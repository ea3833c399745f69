"""recon_models: fastMRI data, reconstruction networks and LightningModules that log DFDs."""
