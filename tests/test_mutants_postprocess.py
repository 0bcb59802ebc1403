"""segkit.postprocess where mutation testing found it unchecked (`make mutate`)."""
