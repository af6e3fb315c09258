"""The curation workflow (design document 001): generate many base images, curate, upscale the survivors."""
