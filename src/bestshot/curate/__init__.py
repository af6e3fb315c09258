"""The curation workflow: generate many base images, curate, upscale the survivors."""
