"""segkit.tiling where mutation testing found it unchecked (`make mutate`)."""
