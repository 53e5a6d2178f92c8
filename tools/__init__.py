"""Commands that are not pipeline stages: the export census, the alpha and mixed sweeps, the registry sync."""
