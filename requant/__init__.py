"""The pipeline's library: everything the stage entry points in stages/ share."""
