"""One module per competition format; each registers its adapter class by name."""
